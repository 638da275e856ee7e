// On-device sampling: one token id per step crosses to the host.
//
// The chain and its semantics are the host sampler's (engine/decode/sampler.py), which is the
// referee: constraint mask, repetition penalty (once per distinct id of the generation's last
// `window` tokens), top-k, top-p and min-p over the untempered distribution, then
// temperature and one draw. The draw is Gumbel-max over the survivors (argmax of
// x / T - log(-log u)), which has the same distribution as the host's inverse-CDF draw; u is
// a hash of (seed, position, id), so a seed fixes the draws.
//
// Thresholds are exact: top-k and top-p are radix selects over an order-preserving integer
// key of each logit, 4 passes of 8 bits, each with per-warp histograms in shared memory (the
// k-th largest key, or the key at which the mass from the top first reaches top_p; ties at
// the threshold survive).
//
// state (int32, device): [pos, token, gen_start, mask_on]. `advance` = 1 (inside the decode
// graph): the logits are those of position state[0]; the token is written at state[0] + 1
// and state[0] advances. `advance` = 0 (after a prefill): the logits are those of position
// state[0] - 1; the token is written at state[0]. history[p] is the token at position p.
// fp: [temperature, top_p, min_p, repetition_penalty]; ip: [top_k, window, seed].

#define SAMPLE_THREADS 1024
#define SAMPLE_WARPS (SAMPLE_THREADS / 32)

__device__ __forceinline__ unsigned order_key(float x) {
    unsigned u = __float_as_uint(x);
    return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__device__ __forceinline__ void argmax_pair(float& best, int& idx, float v, int i) {
    if (v > best || (v == best && i < idx)) { best = v; idx = i; }
}

// Block argmax (ties: the smaller id); every thread gets the result.
__device__ void block_argmax(float& best, int& idx, float* sv, int* si) {
    for (int o = 16; o; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, best, o);
        int oi = __shfl_xor_sync(0xffffffff, idx, o);
        argmax_pair(best, idx, ov, oi);
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) { sv[warp] = best; si[warp] = idx; }
    __syncthreads();
    best = -INFINITY; idx = 0x7fffffff;
    for (int w = 0; w < SAMPLE_WARPS; w++) argmax_pair(best, idx, sv[w], si[w]);
}

__device__ float block_sum_all(float v, float* red) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = 0.f;
    for (int w = 0; w < SAMPLE_WARPS; w++) v += red[w];
    return v;
}

// The smallest key K >= floor such that the weight of the survivors with key >= K reaches
// `target`, counting from the largest key down (weight 1, or exp(x - mx) when `mass`).
// Returns `floor` when the survivors' total weight does not reach the target.
__device__ unsigned radix_select(const float* __restrict__ work, int V, unsigned floor,
                                 bool mass, float mx, float target,
                                 float (*hist)[256], float* total, int* pick, float* above_s) {
    unsigned prefix = 0, pmask = 0;
    float above = 0.f;
    const int warp = threadIdx.x >> 5;
    for (int shift = 24; shift >= 0; shift -= 8) {
        for (int b = threadIdx.x; b < SAMPLE_WARPS * 256; b += SAMPLE_THREADS)
            hist[b >> 8][b & 255] = 0.f;
        __syncthreads();
        for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
            const float x = work[i];
            if (x == -INFINITY) continue;
            const unsigned k = order_key(x);
            if (k < floor || (k & pmask) != prefix) continue;
            atomicAdd(&hist[warp][(k >> shift) & 255], mass ? __expf(x - mx) : 1.f);
        }
        __syncthreads();
        for (int b = threadIdx.x; b < 256; b += SAMPLE_THREADS) {
            float s = 0.f;
            for (int w = 0; w < SAMPLE_WARPS; w++) s += hist[w][b];
            total[b] = s;
        }
        __syncthreads();
        if (threadIdx.x == 0) {
            float acc = above;
            int b = 255;
            for (; b >= 0; b--) {
                if (acc + total[b] >= target) break;
                acc += total[b];
            }
            *pick = b;
            *above_s = acc;
        }
        __syncthreads();
        const int b = *pick;
        if (b < 0) return floor;  // uniform: every thread read the same pick
        prefix |= (unsigned)b << shift;
        pmask |= 255u << shift;
        above = *above_s;
        __syncthreads();
    }
    return prefix > floor ? prefix : floor;
}

extern "C" __global__ void __launch_bounds__(SAMPLE_THREADS) sample_token(
    const float* __restrict__ logits, int V, const unsigned* __restrict__ mask_bits,
    int* state, int* history, const float* __restrict__ fp, const int* __restrict__ ip,
    float* __restrict__ work, int advance) {
    __shared__ float hist[SAMPLE_WARPS][256];
    __shared__ float total[256];
    __shared__ float sv[SAMPLE_WARPS];
    __shared__ int si[SAMPLE_WARPS];
    __shared__ int pick;
    __shared__ float above_s;

    PDL_WAIT();
    const int last = advance ? state[0] : state[0] - 1;
    const int gen0 = state[2];
    const bool use_mask = state[3] != 0;
    const float temp = fp[0], top_p = fp[1], min_p = fp[2], rep = fp[3];
    const int top_k = ip[0], window = ip[1];
    const unsigned seed = (unsigned)ip[2];

    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
        float x = logits[i];
        if (use_mask && !((mask_bits[i >> 5] >> (i & 31)) & 1u)) x = -INFINITY;
        work[i] = x;
    }
    __syncthreads();
    if (rep != 1.f && window > 0) {
        const int lo = max(gen0, last - window + 1);
        const int n = last - lo + 1;
        for (int j = threadIdx.x; j < n; j += SAMPLE_THREADS) {
            const int id = history[lo + j];
            bool dup = false;
            for (int k = 0; k < j && !dup; k++) dup = history[lo + k] == id;
            if (!dup && id >= 0 && id < V) {
                const float v = work[id];
                work[id] = v > 0.f ? v / rep : v * rep;
            }
        }
        __syncthreads();
    }
    float best = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) argmax_pair(best, idx, work[i], i);
    block_argmax(best, idx, sv, si);
    if (idx == 0x7fffffff) idx = 0;  // nothing allowed: the constraint never asks for that
    if (temp > 0.f && best > -INFINITY) {
        const float mx = best;
        unsigned floor = 0;
        if (top_k > 0) floor = radix_select(work, V, floor, false, mx, (float)top_k,
                                            hist, total, &pick, &above_s);
        if (top_p < 1.f) {
            float z = 0.f;
            for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
                const float x = work[i];
                if (x > -INFINITY && order_key(x) >= floor) z += __expf(x - mx);
            }
            z = block_sum_all(z, sv);
            floor = radix_select(work, V, floor, true, mx, top_p * z, hist, total, &pick, &above_s);
        }
        if (min_p > 0.f) {
            const unsigned k = order_key(mx + logf(min_p));
            if (k > floor) floor = k;
        }
        const float inv_t = 1.f / temp;
        best = -INFINITY;
        idx = 0x7fffffff;
        for (int i = threadIdx.x; i < V; i += SAMPLE_THREADS) {
            const float x = work[i];
            if (x == -INFINITY || order_key(x) < floor) continue;
            const float u = (hash3(seed, (unsigned)last, (unsigned)i) >> 8) * (1.f / 16777216.f)
                            + 0.5f / 16777216.f;
            argmax_pair(best, idx, x * inv_t - __logf(-__logf(u)), i);
        }
        block_argmax(best, idx, sv, si);
        if (idx == 0x7fffffff) idx = 0;
    }
    if (threadIdx.x == 0) {
        history[last + 1] = idx;
        state[1] = idx;
        if (advance) state[0] = last + 1;
    }
}
