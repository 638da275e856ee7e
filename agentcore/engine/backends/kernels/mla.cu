// deepseek2 kernels: multi-head latent attention over the latent cache, and MoE routing.
//
// Latent cache: half of shape (L, cap, W) with W = R + P per token and layer: the normalised
// compressed KV (R = kv_lora_rank values) then the rotated shared rope key (P rope dims).
// Positions read from device memory (pos_dev) let the decode graph run at any position; when
// pos_dev is null the host value is used. Uses block_sum and INFINITY from ops.cu.

// Row t of x (stride x_stride) from offset `off`: the latent part is RMS-normalised with
// norm_w, the rope part rotated (adjacent pairs) at pos0 + t (+ *pos_dev); both go to the
// cache at that position. One block per token.
extern "C" __global__ void mla_kv_write(const float* __restrict__ x, long long x_stride, int off,
                                        int R, int P, const float* __restrict__ norm_w, float eps,
                                        const float* __restrict__ cos_t,
                                        const float* __restrict__ sin_t, int pos0,
                                        const int* pos_dev, __half* __restrict__ cache, int layer,
                                        int cap) {
    __shared__ float red[32];
    const int t = blockIdx.x;
    const int pos = pos0 + t + (pos_dev ? *pos_dev : 0);
    const float* r = x + (long long)t * x_stride + off;
    float ss = 0.f;
    for (int i = threadIdx.x; i < R; i += blockDim.x) ss += r[i] * r[i];
    const float s = rsqrtf(block_sum(ss, red) / R + eps);
    __half* o = cache + ((long long)layer * cap + pos) * (R + P);
    for (int i = threadIdx.x; i < R; i += blockDim.x) o[i] = __float2half(r[i] * s * norm_w[i]);
    for (int i = threadIdx.x; i < P / 2; i += blockDim.x) {
        float c = cos_t[(long long)pos * (P / 2) + i], sn = sin_t[(long long)pos * (P / 2) + i];
        float x0 = r[R + 2 * i], x1 = r[R + 2 * i + 1];
        o[R + 2 * i] = __float2half(x0 * c - x1 * sn);
        o[R + 2 * i + 1] = __float2half(x0 * sn + x1 * c);
    }
}

// q (T, H, qk) with qk = nope + P: the rope part of every head rotated (adjacent pairs) at
// pos0 + t (+ *pos_dev) into q_pe (T, H, P). One block per (t, h).
extern "C" __global__ void mla_q_rope(const float* __restrict__ q, int H, int nope, int P,
                                      const float* __restrict__ cos_t,
                                      const float* __restrict__ sin_t, int pos0,
                                      const int* pos_dev, float* __restrict__ q_pe) {
    const int t = blockIdx.x / H;
    const int pos = pos0 + t + (pos_dev ? *pos_dev : 0);
    const float* r = q + (long long)blockIdx.x * (nope + P) + nope;
    float* o = q_pe + (long long)blockIdx.x * P;
    for (int i = threadIdx.x; i < P / 2; i += blockDim.x) {
        float c = cos_t[(long long)pos * (P / 2) + i], sn = sin_t[(long long)pos * (P / 2) + i];
        float x0 = r[2 * i], x1 = r[2 * i + 1];
        o[2 * i] = x0 * c - x1 * sn;
        o[2 * i + 1] = x0 * sn + x1 * c;
    }
}

// Per-head projection y[t, h, i] = sum_j w[h, i, j] * x[t, h, j] with w (H, n_out, n_in)
// fp32 and x rows at x + t * x_t + h * x_h. Grid (T * H, ceil(n_out / 8)), 256 threads: a
// warp per output row (enough blocks to keep HBM busy), x staged in shared memory
// (n_in <= 2048).
extern "C" __global__ void __launch_bounds__(256) head_gemv(
    const float* __restrict__ x, long long x_t, long long x_h, const float* __restrict__ w,
    int H, int n_out, int n_in, float* __restrict__ y) {
    __shared__ float xs[2048];
    const int t = blockIdx.x / H, h = blockIdx.x % H;
    const float* xr = x + t * x_t + h * x_h;
    for (int j = threadIdx.x; j < n_in; j += blockDim.x) xs[j] = xr[j];
    __syncthreads();
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    float* yr = y + (long long)blockIdx.x * n_out;
    const int i = blockIdx.y * 8 + warp;
    if (i >= n_out) return;
    const float* wr = w + ((long long)h * n_out + i) * n_in;
    float s = 0.f;
    for (int j = lane; j < n_in; j += 32) s += wr[j] * xs[j];
    for (int o = 16; o; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    if (lane == 0) yr[i] = s;
}

// MLA decode, phase 1: one query over positions [start, end) of split blockIdx.x of the
// first n positions (n = *pos_dev + 1, or n_host), for heads [16 * blockIdx.y, +16). Scores
// are scale * (q_lat . latent + rope_scale * q_pe . k_pe) and the values are the latents. A
// warp owns two heads; lane l owns dims l + 32k of the latent row (k < R / 32) and of the
// rope part, so each cached row is read from global memory once per block for 16 heads.
// Writes (m, l) and the unnormalised accumulator per head and split in attn_combine's layout.
// R is a multiple of 32, R + P a multiple of 8 (instantiated for the shapes the host lists).
#define MLA_TILE 16
template <int R, int P>
__global__ void __launch_bounds__(256) mla_attn_split(
    const float* __restrict__ q_lat, const float* __restrict__ q_pe, int H,
    const __half* __restrict__ cache, int layer, int cap, int n_host, const int* pos_dev,
    float scale, float rope_scale, float* __restrict__ part_o, float* __restrict__ part_ml,
    int nsplit) {
    constexpr int W = R + P, KR = R / 32, KP = (P + 31) / 32;
    __shared__ __align__(16) __half tile[MLA_TILE * W];
    const int split = blockIdx.x;
    const int n = pos_dev ? *pos_dev + 1 : n_host;
    const int per = ((n + nsplit - 1) / nsplit + MLA_TILE - 1) / MLA_TILE * MLA_TILE;
    const int start = split * per, end = min(n, start + per);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int h0 = 16 * blockIdx.y + 2 * warp, h1 = h0 + 1;
    const bool has0 = h0 < H, has1 = h1 < H;
    if (start >= end) {
        if (lane == 0) {
            if (has0) { part_ml[((long long)h0 * nsplit + split) * 2] = -INFINITY; part_ml[((long long)h0 * nsplit + split) * 2 + 1] = 0.f; }
            if (has1) { part_ml[((long long)h1 * nsplit + split) * 2] = -INFINITY; part_ml[((long long)h1 * nsplit + split) * 2 + 1] = 0.f; }
        }
        return;
    }
    float qa[KR], qb[KR], pa[KP], pb[KP];
#pragma unroll
    for (int k = 0; k < KR; k++) {
        qa[k] = has0 ? q_lat[(long long)h0 * R + lane + 32 * k] * scale : 0.f;
        qb[k] = has1 ? q_lat[(long long)h1 * R + lane + 32 * k] * scale : 0.f;
    }
#pragma unroll
    for (int k = 0; k < KP; k++) {
        const bool in = lane + 32 * k < P;
        pa[k] = has0 && in ? q_pe[(long long)h0 * P + lane + 32 * k] * scale * rope_scale : 0.f;
        pb[k] = has1 && in ? q_pe[(long long)h1 * P + lane + 32 * k] * scale * rope_scale : 0.f;
    }
    float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f, acca[KR], accb[KR];
#pragma unroll
    for (int k = 0; k < KR; k++) { acca[k] = 0.f; accb[k] = 0.f; }
    const __half* rows0 = cache + (long long)layer * cap * W;
    for (int base = start; base < end; base += MLA_TILE) {
        const int rows = min(MLA_TILE, end - base);
        __syncthreads();  // the previous tile is consumed
        const uint4* src = (const uint4*)(rows0 + (long long)base * W);
        uint4* dst = (uint4*)tile;
        for (int i = threadIdx.x; i < rows * W / 8; i += blockDim.x) dst[i] = src[i];
        __syncthreads();
        // Four positions at a time: their eight shuffle chains interleave, and one rescale
        // of the accumulators serves all four.
        for (int p = 0; p < rows; p += 4) {
            float lat[4][KR], sa[4], sb[4];
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const bool ok = p + j < rows;
                const __half* row = tile + (p + j) * W;
                sa[j] = 0.f;
                sb[j] = 0.f;
#pragma unroll
                for (int k = 0; k < KR; k++) {
                    lat[j][k] = ok ? __half2float(row[lane + 32 * k]) : 0.f;
                    sa[j] += qa[k] * lat[j][k];
                    sb[j] += qb[k] * lat[j][k];
                }
#pragma unroll
                for (int k = 0; k < KP; k++) {
                    float kp = ok && lane + 32 * k < P ? __half2float(row[R + lane + 32 * k]) : 0.f;
                    sa[j] += pa[k] * kp;
                    sb[j] += pb[k] * kp;
                }
            }
#pragma unroll
            for (int o = 16; o; o >>= 1)
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    sa[j] += __shfl_xor_sync(0xffffffff, sa[j], o);
                    sb[j] += __shfl_xor_sync(0xffffffff, sb[j], o);
                }
            float mna = ma, mnb = mb;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                if (p + j >= rows) { sa[j] = -INFINITY; sb[j] = -INFINITY; }
                mna = fmaxf(mna, sa[j]);
                mnb = fmaxf(mnb, sb[j]);
            }
            const float ca = __expf(ma - mna), cb = __expf(mb - mnb);
            float wa[4], wb[4];
            la *= ca;
            lb *= cb;
#pragma unroll
            for (int j = 0; j < 4; j++) {
                wa[j] = __expf(sa[j] - mna);
                wb[j] = __expf(sb[j] - mnb);
                la += wa[j];
                lb += wb[j];
            }
#pragma unroll
            for (int k = 0; k < KR; k++) {
                acca[k] = acca[k] * ca + wa[0] * lat[0][k] + wa[1] * lat[1][k] + wa[2] * lat[2][k] + wa[3] * lat[3][k];
                accb[k] = accb[k] * cb + wb[0] * lat[0][k] + wb[1] * lat[1][k] + wb[2] * lat[2][k] + wb[3] * lat[3][k];
            }
            ma = mna;
            mb = mnb;
        }
    }
    if (has0) {
        long long pi = (long long)h0 * nsplit + split;
#pragma unroll
        for (int k = 0; k < KR; k++) part_o[pi * R + lane + 32 * k] = acca[k];
        if (lane == 0) { part_ml[pi * 2] = ma; part_ml[pi * 2 + 1] = la; }
    }
    if (has1) {
        long long pi = (long long)h1 * nsplit + split;
#pragma unroll
        for (int k = 0; k < KR; k++) part_o[pi * R + lane + 32 * k] = accb[k];
        if (lane == 0) { part_ml[pi * 2] = mb; part_ml[pi * 2 + 1] = lb; }
    }
}

// MoE routing of one token on the device, as engine/model/deepseek2.route does on the host:
// probabilities (softmax or sigmoid) of the router logits; selection on probabilities plus
// the bias, within the n_group_used best groups (a group's score: its two best) when
// n_groups > 1; ties to the lower index; weights are the unbiased probabilities, normalised
// (sum clamped to 6.1035e-5) and scaled when asked. One block of 256 threads per token.
extern "C" __global__ void moe_route(const float* __restrict__ logits, const float* __restrict__ bias,
                                     int ne, int k, int sigmoid, int n_groups, int n_group_used,
                                     int norm, float wscale, int* __restrict__ eids,
                                     float* __restrict__ ew) {
    __shared__ float prob[1024], sel[1024];
    __shared__ bool taken[1024];
    __shared__ float red[32];
    const float* l = logits + (long long)blockIdx.x * ne;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < ne; i += blockDim.x) mx = fmaxf(mx, l[i]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
    __shared__ float redm[32];
    if ((threadIdx.x & 31) == 0) redm[threadIdx.x >> 5] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) mx = fmaxf(mx, redm[i]);
    float part = 0.f;
    for (int i = threadIdx.x; i < ne; i += blockDim.x) {
        float p = sigmoid ? 1.f / (1.f + expf(-l[i])) : expf(l[i] - mx);
        prob[i] = p;
        part += p;
    }
    float total = block_sum(part, red);
    for (int i = threadIdx.x; i < ne; i += blockDim.x) {
        if (!sigmoid) prob[i] /= total;
        sel[i] = prob[i] + (bias ? bias[i] : 0.f);
        taken[i] = false;
    }
    __syncthreads();
    if (threadIdx.x >= 32) return;  // one warp selects: k rounds of a warp-wide argmax
    const int lane = threadIdx.x;
    if (n_groups > 1) {
        const int gs = ne / n_groups;
        float gscore[2];
        for (int j = 0; j < 2; j++) {
            const int g = lane + 32 * j;
            float a = -INFINITY, b = -INFINITY;  // the two best of group g
            if (g < n_groups)
                for (int i = g * gs; i < (g + 1) * gs; i++) {
                    float v = sel[i];
                    if (v > a) { b = a; a = v; } else if (v > b) b = v;
                }
            gscore[j] = g < n_groups ? a + b : -INFINITY;
        }
        unsigned long long keep = 0ull;
        for (int u = 0; u < n_group_used; u++) {
            float bv = -INFINITY;
            int bi = 0x7fffffff;
            for (int j = 0; j < 2; j++) {
                const int g = lane + 32 * j;
                if (g < n_groups && !((keep >> g) & 1ull) && (gscore[j] > bv || (gscore[j] == bv && g < bi))) {
                    bv = gscore[j];
                    bi = g;
                }
            }
            for (int o = 16; o; o >>= 1) {
                float ov = __shfl_xor_sync(0xffffffff, bv, o);
                int oi = __shfl_xor_sync(0xffffffff, bi, o);
                if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
            }
            keep |= 1ull << bi;
        }
        for (int i = lane; i < ne; i += 32)
            if (!((keep >> (i / gs)) & 1ull)) sel[i] = -INFINITY;
        __syncwarp();
    }
    int* out_ids = eids + blockIdx.x * k;
    float* out_w = ew + blockIdx.x * k;
    float wsum = 0.f;
    for (int s = 0; s < k; s++) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int i = lane; i < ne; i += 32)
            if (!taken[i] && (sel[i] > bv || (sel[i] == bv && i < bi))) { bv = sel[i]; bi = i; }
        for (int o = 16; o; o >>= 1) {
            float ov = __shfl_xor_sync(0xffffffff, bv, o);
            int oi = __shfl_xor_sync(0xffffffff, bi, o);
            if (ov > bv || (ov == bv && oi < bi)) { bv = ov; bi = oi; }
        }
        if (lane == 0) {
            taken[bi] = true;
            out_ids[s] = bi;
            out_w[s] = prob[bi];
        }
        wsum += prob[bi];
        __syncwarp();
    }
    if (lane != 0) return;
    if (norm) {
        float d = fmaxf(wsum, 6.103515625e-5f);
        for (int s = 0; s < k; s++) out_w[s] /= d;
    }
    if (wscale != 0.f && wscale != 1.f)
        for (int s = 0; s < k; s++) out_w[s] *= wscale;
}

// x[i] += sum_s ew[s] * y[s, i] for the k expert outputs of one token (y: (k, n)).
extern "C" __global__ void moe_combine(float* __restrict__ x, const float* __restrict__ y,
                                       const float* __restrict__ ew, int k, int n) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float s = 0.f;
    for (int e = 0; e < k; e++) s += ew[e] * y[(long long)e * n + i];
    x[i] += s;
}
