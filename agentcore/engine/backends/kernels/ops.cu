// Elementwise and attention kernels of the CUDA backend (see ops_cuda.py for the layouts).
//
// Paged KV pool: half of shape (n_blocks, n_layers, 2, BS, KVH, D), or for kv_dtype q8_0 bytes
// of shape (n_blocks, n_layers, 2, BS, KVH, D / 32 * 34): each (position, head) row is GGUF
// Q8_0 blocks (an fp16 scale, then 32 int8), the CPU's and the checkpoints' layout. A
// sequence's logical block b lives in physical block table[b]. Positions read from device memory (pos_dev) let
// the captured decode graph run at any position; when pos_dev is null the host value is used.

#include <cuda_fp16.h>
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

// Offset, in pool elements (halves, or bytes for q8_0), of the row of (pos, layer, K/V, head);
// RW is a row's width in elements (D, or D / 32 * 34).
__device__ __forceinline__ long long kv_index(const int* table, int pos, int layer, int kv,
                                              int h, int L, int BS, int KVH, int RW) {
    long long blk = table[pos / BS];
    return ((((blk * L + layer) * 2 + kv) * BS + pos % BS) * KVH + h) * (long long)RW;
}

constexpr int Q8B = 34;  // bytes of a Q8_0 block: fp16 scale, 32 int8

// One warp quantizes 32 values (lane i holds x) into a Q8_0 block at dst, as llama.cpp's
// quantize_row_q8_0 and the CPU's quantize_q8_0: d = max|x| / 127, q = round(x / d), half
// away from zero, with 1/d taken in fp32 as they do.
__device__ __forceinline__ void q8_store_warp(float x, unsigned char* dst) {
    const int lane = threadIdx.x & 31;
    float a = fabsf(x);
#pragma unroll
    for (int o = 16; o; o >>= 1) a = fmaxf(a, __shfl_xor_sync(0xffffffff, a, o));
    const float d = a / 127.f;
    const float inv = d > 0.f ? 1.f / d : 0.f;
    dst[2 + lane] = (unsigned char)(signed char)(int)roundf(x * inv);
    if (lane == 0) *(__half*)dst = __float2half(d);
}

__device__ __forceinline__ float block_sum(float v, float* red) {
    for (int o = 16; o; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = (blockDim.x + 31) >> 5;
    __syncthreads();
    if (lane == 0) red[warp] = v;
    __syncthreads();
    v = 0.f;
    for (int i = 0; i < nw; i++) v += red[i];
    return v;
}

__device__ __forceinline__ void store_as(float* p, float v) { *p = v; }
__device__ __forceinline__ void store_as(__half* p, float v) { *p = __float2half(v); }

// out[r] = x[r] / rms(x[r]) * w, one block per row of n; T: float, or __half for a prefill
// GEMM's operand as it is (rmsnorm_f16: no separate conversion).
template <typename T>
__device__ __forceinline__ void rmsnorm_rows(const float* __restrict__ x, const float* __restrict__ w,
                                             T* __restrict__ out, int n, float eps) {
    __shared__ float red[32];
    x += (long long)blockIdx.x * n;
    out += (long long)blockIdx.x * n;
    float ss = 0.f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += x[i] * x[i];
    float s = rsqrtf(block_sum(ss, red) / n + eps);
    for (int i = threadIdx.x; i < n; i += blockDim.x) store_as(out + i, x[i] * s * w[i]);
}

extern "C" __global__ void rmsnorm(const float* __restrict__ x, const float* __restrict__ w,
                                   float* __restrict__ out, int n, float eps) {
    rmsnorm_rows(x, w, out, n, eps);
}

extern "C" __global__ void rmsnorm_f16(const float* __restrict__ x, const float* __restrict__ w,
                                       __half* __restrict__ out, int n, float eps) {
    rmsnorm_rows(x, w, out, n, eps);
}

__device__ __forceinline__ void rotate(const float* x, float* y, int D, int pos,
                                       const float* cos_t, const float* sin_t, int neox) {
    for (int i = threadIdx.x; i < D / 2; i += blockDim.x) {
        int a = neox ? i : 2 * i, b = neox ? i + D / 2 : 2 * i + 1;
        float c = cos_t[(long long)pos * (D / 2) + i], s = sin_t[(long long)pos * (D / 2) + i];
        float x0 = x[a], x1 = x[b];
        y[a] = x0 * c - x1 * s;
        y[b] = x0 * s + x1 * c;
    }
}

// x (T, H, D) -> out, rotated at positions pos0 + t (+ *pos_dev). One block per (t, h).
extern "C" __global__ void rope(const float* __restrict__ x, float* __restrict__ out, int H,
                                int D, const float* cos_t, const float* sin_t, int pos0,
                                const int* pos_dev, int neox) {
    int t = blockIdx.x / H;
    int pos = pos0 + t + (pos_dev ? *pos_dev : 0);
    long long off = (long long)blockIdx.x * D;
    rotate(x + off, out + off, D, pos, cos_t, sin_t, neox);
}

// K/V (T, KVH, D) fp32 -> pool at positions pos0 + t (+ *pos_dev).
extern "C" __global__ void kv_store(const float* __restrict__ k, const float* __restrict__ v,
                                    __half* pool, const int* table, int layer, int L, int BS,
                                    int KVH, int D, int T, int pos0, const int* pos_dev) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * KVH * D) return;
    int d = i % D, h = (i / D) % KVH, t = i / ((long long)D * KVH);
    int pos = pos0 + t + (pos_dev ? *pos_dev : 0);
    pool[kv_index(table, pos, layer, 0, h, L, BS, KVH, D) + d] = __float2half(k[i]);
    pool[kv_index(table, pos, layer, 1, h, L, BS, KVH, D) + d] = __float2half(v[i]);
}

// kv_store for a q8_0 pool: warp w quantizes values [32w, 32w + 32), one Q8_0 block of K and
// one of V (D % 32 == 0, and T * KVH * D is a multiple of 32: whole warps return together).
extern "C" __global__ void kv_store_q8(const float* __restrict__ k, const float* __restrict__ v,
                                       unsigned char* pool, const int* table, int layer, int L,
                                       int BS, int KVH, int D, int T, int pos0, const int* pos_dev) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * KVH * D) return;
    int d = i % D, h = (i / D) % KVH, t = i / ((long long)D * KVH);
    int pos = pos0 + t + (pos_dev ? *pos_dev : 0);
    const int RW = D / 32 * Q8B;
    long long blk = (d / 32) * Q8B;
    q8_store_warp(k[i], pool + kv_index(table, pos, layer, 0, h, L, BS, KVH, RW) + blk);
    q8_store_warp(v[i], pool + kv_index(table, pos, layer, 1, h, L, BS, KVH, RW) + blk);
}

// Fused RoPE + KV store for one token: qkv (its H + 2 KVH heads of D) -> q rotated
// (optionally head-normed first, qwen3) into q_out; k rotated and v stored into the pool at
// pos (fp16, or quantized to Q8_0 one warp per 32 values when Q8). Block per head (blockIdx.x),
// 128 threads. The decode step runs it at *pos_dev; a prefill chunk at pos0 + blockIdx.y.
template <bool Q8>
__device__ __forceinline__ void rope_kv_row(const float* __restrict__ qkv, float* __restrict__ q_out,
                                            void* pool, const int* table, int layer, int L,
                                            int BS, int H, int KVH, int D, const float* cos_t,
                                            const float* sin_t, int pos, int neox,
                                            const float* q_norm, const float* k_norm, float eps) {
    __shared__ float buf[2][512];
    __shared__ float red[32];
    int hb = blockIdx.x;
    const float* src = qkv + (long long)hb * D;
    const float* nw = hb < H ? q_norm : (hb < H + KVH ? k_norm : nullptr);
    float s = 1.f;
    if (nw) {
        float ss = 0.f;
        for (int i = threadIdx.x; i < D; i += blockDim.x) ss += src[i] * src[i];
        s = rsqrtf(block_sum(ss, red) / D + eps);
    }
    for (int i = threadIdx.x; i < D; i += blockDim.x) buf[0][i] = nw ? src[i] * s * nw[i] : src[i];
    __syncthreads();
    if (hb < H + KVH) rotate(buf[0], buf[1], D, pos, cos_t, sin_t, neox);
    __syncthreads();
    if (hb < H) {
        for (int i = threadIdx.x; i < D; i += blockDim.x) q_out[(long long)hb * D + i] = buf[1][i];
        return;
    }
    const int kv = hb < H + KVH ? 0 : 1, h = hb - H - kv * KVH;
    const float* row = buf[1 - kv];  // K rotated, V as it is
    if constexpr (Q8) {
        unsigned char* dst = (unsigned char*)pool + kv_index(table, pos, layer, kv, h, L, BS, KVH, D / 32 * Q8B);
        for (int b = threadIdx.x / 32; b < D / 32; b += blockDim.x / 32)
            q8_store_warp(row[b * 32 + (threadIdx.x & 31)], dst + b * Q8B);
    } else {
        __half* dst = (__half*)pool + kv_index(table, pos, layer, kv, h, L, BS, KVH, D);
        for (int i = threadIdx.x; i < D; i += blockDim.x) dst[i] = __float2half(row[i]);
    }
}

template <bool Q8>
__device__ __forceinline__ void rope_kv_body(const float* __restrict__ qkv, float* __restrict__ q_out,
                                             void* pool, const int* table, int layer, int L,
                                             int BS, int H, int KVH, int D, const float* cos_t,
                                             const float* sin_t, const int* pos_dev, int neox,
                                             const float* q_norm, const float* k_norm, float eps) {
    PDL_WAIT();
    rope_kv_row<Q8>(qkv, q_out, pool, table, layer, L, BS, H, KVH, D, cos_t, sin_t, *pos_dev, neox, q_norm, k_norm,
                    eps);
}

// Prefill: T rows of qkv ((T, H + 2 KVH, D), contiguous) at positions pos0 + t: q rotated to
// q_out (T, H, D), K and V into the pool; grid (H + 2 KVH, T). The same arithmetic as the
// decode step, so a prompt's KV is the KV its tokens decoded one by one would write.
template <bool Q8>
__device__ __forceinline__ void rope_kv_rows(const float* __restrict__ qkv, float* __restrict__ q_out,
                                             void* pool, const int* table, int layer, int L, int BS,
                                             int H, int KVH, int D, const float* cos_t,
                                             const float* sin_t, int pos0, int neox,
                                             const float* q_norm, const float* k_norm, float eps) {
    const long long t = blockIdx.y;
    rope_kv_row<Q8>(qkv + t * (H + 2 * KVH) * D, q_out + t * H * D, pool, table, layer, L, BS, H, KVH, D, cos_t,
                    sin_t, pos0 + (int)t, neox, q_norm, k_norm, eps);
}
#define ROPE_KV_ROWS_ARGS const float* __restrict__ qkv, float* __restrict__ q_out, void* pool,   \
    const int* table, int layer, int L, int BS, int H, int KVH, int D, const float* cos_t,         \
    const float* sin_t, int pos0, int neox, const float* q_norm, const float* k_norm, float eps
#define ROPE_KV_ROWS_PASS qkv, q_out, pool, table, layer, L, BS, H, KVH, D, cos_t, sin_t, pos0,   \
    neox, q_norm, k_norm, eps
extern "C" __global__ void rope_kv_prefill(ROPE_KV_ROWS_ARGS) { rope_kv_rows<false>(ROPE_KV_ROWS_PASS); }
extern "C" __global__ void rope_kv_prefill_q8(ROPE_KV_ROWS_ARGS) { rope_kv_rows<true>(ROPE_KV_ROWS_PASS); }

#define ROPE_KV_ARGS const float* __restrict__ qkv, float* __restrict__ q_out, void* pool,        \
    const int* table, int layer, int L, int BS, int H, int KVH, int D, const float* cos_t,         \
    const float* sin_t, const int* pos_dev, int neox, const float* q_norm, const float* k_norm,    \
    float eps
#define ROPE_KV_PASS qkv, q_out, pool, table, layer, L, BS, H, KVH, D, cos_t, sin_t, pos_dev, neox, \
    q_norm, k_norm, eps
extern "C" __global__ void rope_kv_decode(ROPE_KV_ARGS) { rope_kv_body<false>(ROPE_KV_PASS); }
extern "C" __global__ void rope_kv_decode_q8(ROPE_KV_ARGS) { rope_kv_body<true>(ROPE_KV_PASS); }

// A thread's 8 consecutive values of a K or V row, as loaded (16 bytes of fp16; or for q8_0
// the aligned words holding its 8 int8 and its block's scale), and their float values.
// q8_0: sub's values are int8 [8 (sub % 4), +8) of block b = sub / 4, at byte 34 b + 2 + 8
// (sub % 4) of a row that starts 4-byte aligned (D = 64, 128, 256: rows of 68, 136, 272
// bytes), so 2 mod 4 when b is even (three words, realigned by a funnel shift), 0 mod 4 when
// b is odd (two words); the scale is the low half of word 34 b (b even) or the high half of
// the word before (b odd). No load leaves the row.
template <bool Q8>
__device__ __forceinline__ uint4 kv_load(const void* pool, long long row, int sub) {
    if constexpr (!Q8) {
        return *(const uint4*)((const __half*)pool + row + sub * 8);
    } else {
        const unsigned char* p = (const unsigned char*)pool + row;
        const int b = sub >> 2, o = b * Q8B + 2 + 8 * (sub & 3);
        const unsigned* w = (const unsigned*)(p + (o & ~3));
        uint4 r;
        r.x = w[0];
        r.y = w[1];
        r.z = (o & 3) ? w[2] : 0u;
        r.w = *(const unsigned*)(p + ((b * Q8B) & ~3));
        return r;
    }
}

// f[e] = value e of the row's 8 (unscaled int8 for q8_0); returns the scale (1 for fp16).
template <bool Q8>
__device__ __forceinline__ float kv_unpack(uint4 r, int sub, float f[8]) {
    if constexpr (!Q8) {
        const __half2* h = (const __half2*)&r;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            float2 a = __half22float2(h[e]);
            f[2 * e] = a.x; f[2 * e + 1] = a.y;
        }
        return 1.f;
    } else {
        const int odd = (sub >> 2) & 1;
        const unsigned sh = odd ? 0u : 16u;
        const unsigned lo = __funnelshift_r(r.x, r.y, sh), hi = __funnelshift_r(r.y, r.z, sh);
        // int8 -> float by the exponent trick: 0x4B000000 | (byte ^ 0x80) is 2^23 + 128 + q.
        const unsigned a = lo ^ 0x80808080u, c = hi ^ 0x80808080u;
        f[0] = __int_as_float(__byte_perm(a, 0x4B000000u, 0x7650)) - 8388736.f;
        f[1] = __int_as_float(__byte_perm(a, 0x4B000000u, 0x7651)) - 8388736.f;
        f[2] = __int_as_float(__byte_perm(a, 0x4B000000u, 0x7652)) - 8388736.f;
        f[3] = __int_as_float(__byte_perm(a, 0x4B000000u, 0x7653)) - 8388736.f;
        f[4] = __int_as_float(__byte_perm(c, 0x4B000000u, 0x7650)) - 8388736.f;
        f[5] = __int_as_float(__byte_perm(c, 0x4B000000u, 0x7651)) - 8388736.f;
        f[6] = __int_as_float(__byte_perm(c, 0x4B000000u, 0x7652)) - 8388736.f;
        f[7] = __int_as_float(__byte_perm(c, 0x4B000000u, 0x7653)) - 8388736.f;
        const unsigned short bits = odd ? (unsigned short)(r.w >> 16) : (unsigned short)(r.w & 0xffffu);
        return __half2float(__ushort_as_half(bits));
    }
}

// Flash-decoding's merge, done by the last block of a KV head to finish (a split-K fixup, so
// the merge needs no kernel of its own). Of a launch's nsplit slices only the first `used`
// hold positions (the others exit at once, writing and counting nothing); with used == 1 the
// one block writes out itself. Otherwise each used block writes its split's (m, l, o) for
// the G query heads, then counts itself in sem[h]; the block that brings the count to `used`
// resets it (the next launch on the stream starts from 0) and merges every split into out
// (G heads x D). 8 / G warps merge a query head (G <= 8), each over every (8 / G)-th run of
// 32 splits: the runs' maxima a lane each, then each split's o over coalesced rows (D / 32
// values a lane, the split's weight broadcast by shuffle, eight splits' reads in flight);
// one barrier joins a head's warps. (It was 8 warps a head, one head after another, three
// barriers and two reads a head: at short context attention took 0.47 ms of the 8B's
// 2.64 ms token, decode_ablation.py at 90446bd.) Other blocks wrote the partials, so they
// are read through L2 (__ldcg), never a stale L1 line. An empty split's weight is 0 and its
// o is never read.
// macc_buf: 8 * 32 ceil(D / 32) floats of shared memory the block no longer uses (attn_tc:
// its scores'; attn_split declares them).
template <int D>
__device__ __forceinline__ void attn_merge_last(int h, int G, int nsplit, int used, const float* part_o,
                                                const float* part_ml, float* __restrict__ out, int* sem,
                                                float* macc_buf, int8_t* __restrict__ oq,
                                                float2* __restrict__ os) {
    __shared__ int is_last;
    __syncthreads();  // every partial of this block is written
    if (threadIdx.x == 0) {
        int last = 1;
        if (used > 1) {
            __threadfence();  // release: this block's partials before its count
            last = atomicAdd(sem + h, 1) == used - 1;
            if (last) {
                sem[h] = 0;
                __threadfence();  // acquire: the other blocks' partials after their counts
            }
        }
        is_last = last;
    }
    __syncthreads();
    if (!is_last) return;  // block-uniform
    // K = 8 / G warps a head (G <= 8), warp c of a head summing the splits s = c mod K; their
    // partial sums meet in shared memory. One warp a head read its head's splits one after
    // another: SmolLM2's attention at 32K (176 splits) took 1.27 ms a token, 0.79 with this.
    constexpr int PL = (D + 31) / 32;  // values a lane sums
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int K = 8 / G, j = warp / K, c = warp % K;
    __shared__ float msum[8];
    float (*macc)[PL * 32] = (float (*)[PL * 32])macc_buf;
    if (j < G) {
        const long long hq = (long long)h * G + j;
        const float* ml = part_ml + hq * nsplit * 2;
        const float* po = part_o + hq * nsplit * D;
        float mx = -INFINITY;
        for (int s = lane; s < used; s += 32) mx = fmaxf(mx, __ldcg(ml + 2 * s));
        for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
        float acc[PL], lsum = 0.f;
#pragma unroll
        for (int i = 0; i < PL; i++) acc[i] = 0.f;
        for (int s0 = c * 32; s0 < used; s0 += K * 32) {  // lane l weighs split s0 + l
            const int s = s0 + lane;
            float w = 0.f;
            if (s < used) {
                const float ms = __ldcg(ml + 2 * s);
                if (ms != -INFINITY) {
                    w = __expf(ms - mx);
                    lsum += w * __ldcg(ml + 2 * s + 1);
                }
            }
            const int cnt = min(32, used - s0);
#pragma unroll 8
            for (int k = 0; k < cnt; k++) {
                const float wk = __shfl_sync(0xffffffff, w, k);
                const float* row = po + (long long)(s0 + k) * D;
#pragma unroll
                for (int i = 0; i < PL; i++)  // an empty split weighs 0 and is not read
                    if (lane + 32 * i < D && wk != 0.f) acc[i] += wk * __ldcg(row + lane + 32 * i);
            }
        }
        for (int o = 16; o; o >>= 1) lsum += __shfl_xor_sync(0xffffffff, lsum, o);
#pragma unroll
        for (int i = 0; i < PL; i++) macc[warp][lane + 32 * i] = acc[i];
        if (lane == 0) msum[warp] = lsum;
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * D; i += blockDim.x) {
        const int jj = i / D, d = i % D;
        float a = 0.f, l = 0.f;
        for (int cc = 0; cc < K; cc++) {
            a += macc[jj * K + cc][d];
            l += msum[jj * K + cc];
        }
        const long long o = ((long long)h * G + jj) * D + d;
        out[o] = a / l;
        if (oq) quant_warp32(a / l, oq + (o & ~31ll), os + (o >> 5));  // whole warps: G D % 32 == 0
    }
}

// Flash-decoding, phase 1. Grid (KVH, NSPLIT), 256 threads. The context [0, n) is cut into
// NSPLIT slices (multiples of the tile). TPP = D/8 threads share one position (each loads 8
// halves of K and of V as one 16-byte access); a tile is U positions per group of TPP
// threads, GROUPS * U positions a block, all loaded before any is used, so each thread keeps
// 2U 16-byte loads in flight. Each of the G (<= GM) query heads of this KV head keeps an
// online softmax (max m, sum l, acc), rescaled once per tile; the block merges its position
// groups and writes (m, l, acc) per head and split.
// Q8 (q8_0 pools): the same position mapping over kv_load's words; each thread's 8 values
// share one block scale, folded into its partial dot product (K) and its weights (V).
// n = *pos_dev + 1 when pos_dev is set, else n_host.
template <int D, int GM, int Q8>
__global__ void __launch_bounds__(256, GM <= 4 ? 2 : 1) attn_split(
    const float* __restrict__ q, const void* __restrict__ pool, const int* __restrict__ table,
    int layer, int L, int BS, int KVH, int G, int n_host, const int* pos_dev, float scale,
    float* __restrict__ part_o, float* __restrict__ part_ml, int nsplit, float* __restrict__ out,
    int* sem, int8_t* __restrict__ oq, float2* __restrict__ os) {
    constexpr int TPP = D / 8, GROUPS = 256 / TPP, U = GM <= 4 ? 4 : 2, TILE = GROUPS * U;
    constexpr int RW = Q8 ? D / 32 * Q8B : D;  // row width in pool elements
    __shared__ float sm_m[GROUPS][GM], sm_l[GROUPS][GM];
    __shared__ float sm_buf[GROUPS * D];
    PDL_WAIT();
    const int h = blockIdx.x, split = blockIdx.y;
    const int n = pos_dev ? *pos_dev + 1 : n_host;
    const int per = ((n + nsplit - 1) / nsplit + TILE - 1) / TILE * TILE;
    const int used = (n + per - 1) / per;  // slices holding positions (attn_merge_last)
    const int start = split * per, end = min(n, start + per);
    const int grp = threadIdx.x / TPP, sub = threadIdx.x % TPP;
    if (split >= used) return;
    float qr[GM][8];
#pragma unroll
    for (int j = 0; j < GM; j++)
#pragma unroll
        for (int e = 0; e < 8; e++)
            qr[j][e] = j < G ? q[(long long)(h * G + j) * D + sub * 8 + e] * scale : 0.f;
    float m[GM], l[GM], acc[GM][8];
#pragma unroll
    for (int j = 0; j < GM; j++) {
        m[j] = -INFINITY; l[j] = 0.f;
#pragma unroll
        for (int e = 0; e < 8; e++) acc[j][e] = 0.f;
    }
    // Tiles start at multiples of TILE; when BS is one too, a tile lies in one paged block.
    const bool tile_in_block = BS % TILE == 0;
    // The trip count is uniform across the block (groups past `end` idle), so the width-TPP
    // shuffles always run with every lane of the warp present.
    for (int base = start; base < end; base += TILE) {
        uint4 kraw[U], vraw[U];
        if (tile_in_block) {  // one table lookup a tile; positions GROUPS apart are rows apart
            const long long k0 = kv_index(table, base, layer, 0, h, L, BS, KVH, RW) +
                                 (long long)grp * KVH * RW;
            const long long vo = (long long)BS * KVH * RW;  // V follows K in the block
            const long long step = (long long)GROUPS * KVH * RW;
#pragma unroll
            for (int k = 0; k < U; k++) {
                kraw[k] = make_uint4(0, 0, 0, 0);
                vraw[k] = make_uint4(0, 0, 0, 0);
                if (base + grp + GROUPS * k < end) {
                    kraw[k] = kv_load<Q8>(pool, k0 + k * step, sub);
                    vraw[k] = kv_load<Q8>(pool, k0 + vo + k * step, sub);
                }
            }
        } else {
#pragma unroll
            for (int k = 0; k < U; k++) {
                const int p = base + grp + GROUPS * k;
                kraw[k] = make_uint4(0, 0, 0, 0);
                vraw[k] = make_uint4(0, 0, 0, 0);
                if (p < end) {
                    kraw[k] = kv_load<Q8>(pool, kv_index(table, p, layer, 0, h, L, BS, KVH, RW), sub);
                    vraw[k] = kv_load<Q8>(pool, kv_index(table, p, layer, 1, h, L, BS, KVH, RW), sub);
                }
            }
        }
        float s[GM][U];
#pragma unroll
        for (int k = 0; k < U; k++) {
            float kf[8];
            const float ks = kv_unpack<Q8>(kraw[k], sub, kf);
            const bool ok = base + grp + GROUPS * k < end;
#pragma unroll
            for (int j = 0; j < GM; j++) {
                float d = 0.f;
                if (j < G) {
#pragma unroll
                    for (int e = 0; e < 8; e++) d += qr[j][e] * kf[e];
                    if constexpr (Q8) d *= ks;
#pragma unroll
                    for (int o = TPP / 2; o; o >>= 1) d += __shfl_xor_sync(0xffffffff, d, o, TPP);
                }
                s[j][k] = ok ? d : -INFINITY;
            }
        }
        float vf[U][8], vs[U];
#pragma unroll
        for (int k = 0; k < U; k++) vs[k] = kv_unpack<Q8>(vraw[k], sub, vf[k]);
#pragma unroll
        for (int j = 0; j < GM; j++) {
            if (j >= G) break;
            float mt = s[j][0];
#pragma unroll
            for (int k = 1; k < U; k++) mt = fmaxf(mt, s[j][k]);
            const float mn = fmaxf(m[j], mt);
            if (mn == -INFINITY) continue;  // nothing seen yet by this group
            const float c = __expf(m[j] - mn);
            float w[U], ws = 0.f;
#pragma unroll
            for (int k = 0; k < U; k++) { w[k] = __expf(s[j][k] - mn); ws += w[k]; }
            l[j] = l[j] * c + ws;
            if constexpr (Q8) {
#pragma unroll
                for (int k = 0; k < U; k++) w[k] *= vs[k];  // the V block scale, per thread
            }
#pragma unroll
            for (int e = 0; e < 8; e++) {
                float a = acc[j][e] * c;
#pragma unroll
                for (int k = 0; k < U; k++) a += w[k] * vf[k][e];
                acc[j][e] = a;
            }
            m[j] = mn;
        }
    }
    // Merge the GROUPS position groups of this block.
    // Loops over the heads are unrolled to GM with a guard: a run-time index into m, l or
    // acc would move those register arrays to local memory. The position groups are merged
    // through shared memory one head at a time (no shared-memory float atomics: contended,
    // they serialise).
    if (sub == 0) {
#pragma unroll
        for (int j = 0; j < GM; j++)
            if (j < G) { sm_m[grp][j] = m[j]; sm_l[grp][j] = l[j]; }
    }
    __syncthreads();
#pragma unroll
    for (int j = 0; j < GM; j++) {
        if (j >= G) break;  // uniform across the block
        float M = -INFINITY;
        for (int g2 = 0; g2 < GROUPS; g2++) M = fmaxf(M, sm_m[g2][j]);
        float c = (M == -INFINITY || m[j] == -INFINITY) ? 0.f : __expf(m[j] - M);
#pragma unroll
        for (int e = 0; e < 8; e++) sm_buf[grp * D + sub * 8 + e] = acc[j][e] * c;
        float Lsum = 0.f;  // every thread: the one block of a single slice divides by it
        for (int g2 = 0; g2 < GROUPS; g2++)
            Lsum += (M == -INFINITY || sm_m[g2][j] == -INFINITY) ? 0.f : sm_l[g2][j] * __expf(sm_m[g2][j] - M);
        __syncthreads();
        long long pi = (long long)(h * G + j) * nsplit + split;
        for (int d = threadIdx.x; d < D; d += 256) {
            float o = 0.f;
            for (int g2 = 0; g2 < GROUPS; g2++) o += sm_buf[g2 * D + d];
            if (used == 1) {
                const long long oi = (long long)(h * G + j) * D + d;
                out[oi] = o / Lsum;
                if (oq) quant_warp32(o / Lsum, oq + (oi & ~31ll), os + (oi >> 5));  // D % 32 == 0
            } else {
                part_o[pi * D + d] = o;
            }
        }
        if (used > 1 && threadIdx.x == 0) {
            part_ml[pi * 2] = M;
            part_ml[pi * 2 + 1] = Lsum;
        }
        __syncthreads();
    }
    if (used > 1) {
        __shared__ float macc[8 * ((D + 31) / 32) * 32];
        attn_merge_last<D>(h, G, nsplit, used, part_o, part_ml, out, sem, macc, oq, os);
    }
}

// Flash-decoding on tensor cores, phase 1 (head_dim 64, 128 or 256; fp16 or q8_0 pools).
// Grid (KVH, NSPLIT), 256 threads; a split is at most ATTN_TC_SPLIT positions. The G <= 8
// query heads of a KV head are padded to 8, the N of mma.m16n8k16 (fp16 in, fp32 out; PTX,
// no headers). Pass 1 streams the split's K tile by tile (TP positions) into shared memory
// as fp16 (q8_0 dequantized on the way) and takes scores S^T (positions x 8) = K Q^T; then a
// softmax per head (max, P = exp(S - max) in fp16, and its sum); pass 2 streams V the same
// way and takes O^T (D x 8) = V^T P^T, accumulated over the split in registers. Each tile's
// global loads are issued before the previous tile's products, so they are in flight
// during them. K and V are each read once; no online rescaling (a split's scores all sit in
// shared memory).
#define ATTN_TC_SPLIT 512
constexpr int ATTN_TP = 64;

__device__ __forceinline__ unsigned smem_u32(const void* p) {
    unsigned a;
    asm("{ .reg .u64 t; cvta.to.shared.u64 t, %1; cvt.u32.u64 %0, t; }" : "=r"(a) : "l"(p));
    return a;
}
// ldmatrix: four (x4) or two (x2) 8x8 fp16 matrices; lane i gives the address of row i % 8
// of matrix i / 8 and gets, of each matrix, row lane / 4, columns 2 (lane % 4) and +1
// (.trans: those of the transpose).
__device__ __forceinline__ void ldsm4(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
}
__device__ __forceinline__ void ldsm4t(unsigned (&r)[4], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(smem_u32(p)) : "memory");
}
__device__ __forceinline__ void ldsm2(unsigned (&r)[2], const void* p) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(smem_u32(p)) : "memory");
}
// c += a b: A 16x16 row-major (a: rows g, g+8 x columns 2t.., 2t+8..), B 16x8 (b: k 2t.. and
// 2t+8.., column g), C 16x8 (c: rows g, g+8 x columns 2t, 2t+1); g = lane / 4, t = lane % 4.
__device__ __forceinline__ void mma16816(float (&c)[4], const unsigned (&a)[4], unsigned b0, unsigned b1) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// 8 values of a row as fp16: the raw fp16 words, or q8_0 int8 * scale rounded to fp16.
template <bool Q8>
__device__ __forceinline__ uint4 kv_half8(uint4 r, int sub) {
    if constexpr (!Q8) {
        return r;
    } else {
        const int odd = (sub >> 2) & 1;
        const unsigned sh = odd ? 0u : 16u;
        const unsigned lo = __funnelshift_r(r.x, r.y, sh) ^ 0x80808080u;
        const unsigned hi = __funnelshift_r(r.y, r.z, sh) ^ 0x80808080u;
        const unsigned short bits = odd ? (unsigned short)(r.w >> 16) : (unsigned short)(r.w & 0xffffu);
        const __half2 d = __half2half2(__ushort_as_half(bits));
        // 0x6400 | u is the fp16 1024 + u, exact: minus 1152 leaves the int8 q, exact too.
        const __half2 off = __float2half2_rn(1152.f);
        unsigned w[4] = {__byte_perm(lo, 0x64646464u, 0x4140), __byte_perm(lo, 0x64646464u, 0x4342),
                         __byte_perm(hi, 0x64646464u, 0x4140), __byte_perm(hi, 0x64646464u, 0x4342)};
        uint4 out;
        unsigned* o = (unsigned*)&out;
#pragma unroll
        for (int e = 0; e < 4; e++) {
            __half2 v = __hmul2(__hsub2(*(__half2*)&w[e], off), d);
            o[e] = *(unsigned*)&v;
        }
        return out;
    }
}

// cp.async: global -> shared without registers; src_size 0 writes zeros (positions past the
// end). A group per tile; wait_group<N> leaves at most N groups in flight.
template <int BYTES>
__device__ __forceinline__ void cp_async(void* dst, const void* src, bool pred) {
    const unsigned d = smem_u32(dst);
    const int n = pred ? BYTES : 0;
    if constexpr (BYTES == 16)
        asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(d), "l"(src), "r"(n) : "memory");
    else
        asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(d), "l"(src), "n"(BYTES), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory"); }

// The shapes of attn_tc<D, Q8>: a stage holds TP positions' rows as the pool stores them
// (fp16 rows padded to D + 8 halves, so ldmatrix reads them in place; q8_0 rows of RW
// bytes, 17 chunks of D / 16 bytes each, converted to an fp16 tile before the products).
template <int D, int Q8>
struct TcShape {
    static constexpr int TP = ATTN_TP, NST = D <= 128 ? 4 : 3;
    static constexpr int RW = Q8 ? D / 32 * Q8B : D * 2;              // row bytes in the pool
    static constexpr int PITCH = Q8 ? RW : (D + 8) * 2;               // row bytes in a stage
    static constexpr int CB = Q8 ? D / 16 : 16, CPR = RW / CB;       // chunk bytes, per row
    static constexpr int STAGE = TP * PITCH, LDK = D + 8, SMAX = ATTN_TC_SPLIT;
    // P (fp16) overwrites S (fp32) in place, row j at S's row j: its pitch is 2 LDS halves.
    static constexpr int LDS = SMAX + 4, LDP = 2 * LDS, LDQ = D + 8;
    static constexpr int TILE = Q8 ? TP * LDK * 2 : 0;                // q8_0: the fp16 tile
    static constexpr int BYTES = NST * STAGE + TILE + 8 * LDS * 4 + 8 * LDQ * 2;
};

// Queue the copies of positions [base, base + TP) of plane kv (K 0, V 1) into a stage. A tile
// starts at a multiple of TP; when the paged block size is one too (the default 64), the
// tile lies in one block, its rows KVH * RW bytes apart: one table lookup a tile and a
// multiply-add a chunk (a lookup and a run-time division by BS a chunk made the kernel
// issue-bound: ncu at 32K, 89a9471).
// Position `fresh` (the newest, written by rope_kv just before this kernel) is never queued:
// before PDL_WAIT (late false) it is left out, to be copied by tc_fresh_row once the wait
// is over; after it (late true) it is copied here by loads through L2, as tc_fresh_row does.
// Its bytes may share a 128-byte line with the row before it, which a q8_0 copy (cp.async.ca,
// through L1) may have brought into L1 before the wait, stale; only L2 holds them for sure.
// Out of line: inlined at each of its call sites (with the any-block-size path) it was most
// of the kernel's code (attn_tc<128, 0> was 174 KB of SASS, executed from cold instruction
// caches at every launch: ncu had one 64-position tile at 16.8 us, 5d78630).
template <int CB>
__device__ __forceinline__ void ldcg_copy(unsigned char* dst, const unsigned char* src) {
#pragma unroll
    for (int w = 0; w < CB / 4; w++) ((unsigned*)dst)[w] = __ldcg((const unsigned*)src + w);
}
template <int D, int Q8, int PITCH = TcShape<D, Q8>::PITCH>
__device__ __noinline__ void tc_issue(unsigned char* stage, const unsigned char* pool, const int* table,
                                         int kv, int base, int end, int layer, int L, int BS, int KVH, int h,
                                         int fresh, bool late) {
    using T = TcShape<D, Q8>;
    constexpr int N = T::TP * T::CPR;
    if (BS % T::TP == 0) {
        const unsigned char* row0 = pool + kv_index(table, base, layer, kv, h, L, BS, KVH, T::RW);
        const long long pitch = (long long)KVH * T::RW;
#pragma unroll
        for (int i = 0; i < (N + 255) / 256; i++) {
            const int c = threadIdx.x + 256 * i;
            if (N % 256 == 0 || c < N) {
                const int p = c / T::CPR, k = c % T::CPR;
                const bool ok = base + p < end;
                if (base + p == fresh) {
                    if (late) ldcg_copy<T::CB>(stage + p * PITCH + k * T::CB, row0 + p * pitch + k * T::CB);
                } else {
                    cp_async<T::CB>(stage + p * PITCH + k * T::CB, ok ? row0 + p * pitch + k * T::CB : pool, ok);
                }
            }
        }
        return;
    }
#pragma unroll 1
    for (int c = threadIdx.x; c < N; c += 256) {  // any block size: a lookup a chunk
        const int p = c / T::CPR, k = c % T::CPR, pos = base + p;
        const bool ok = pos < end;
        const unsigned char* src = ok ? pool + kv_index(table, pos, layer, kv, h, L, BS, KVH, T::RW) + k * T::CB : pool;
        if (pos == fresh) {
            if (late) ldcg_copy<T::CB>(stage + p * PITCH + k * T::CB, src);
        } else {
            cp_async<T::CB>(stage + p * PITCH + k * T::CB, src, ok);
        }
    }
}

// Row `fresh` of plane kv into its place in a stage holding positions [base, base + TP), by
// loads through L2 (see tc_issue), once PDL_WAIT has returned.
template <int D, int Q8, int PITCH>
__device__ __forceinline__ void tc_fresh_row(unsigned char* stage, const unsigned char* pool, const int* table,
                                             int kv, int base, int fresh, int layer, int L, int BS, int KVH, int h) {
    constexpr int RW = TcShape<D, Q8>::RW;
    const unsigned* src = (const unsigned*)(pool + kv_index(table, fresh, layer, kv, h, L, BS, KVH, RW));
    unsigned* dst = (unsigned*)(stage + (fresh - base) * PITCH);
    for (int w = threadIdx.x; w < RW / 4; w += 256) dst[w] = __ldcg(src + w);
}

// The first NST - 1 tiles of a split (K; V too when v_early, into the stages after K's),
// queued before PDL_WAIT: every position but the newest was written by an earlier decode
// step (or the prefill) and the block table and position are set before the graph runs,
// so at short context the block's one DRAM round trip overlaps the kernel before it
// (rope_kv) instead of following it. tc_fresh_rows, after the wait, adds the newest row.
template <int D, int Q8, int PITCH, int NST>
__device__ __forceinline__ void tc_prologue(unsigned char* stages, const unsigned char* pool, const int* table,
                                            int start, int end, int ntiles, bool v_early, int fresh, bool late,
                                            int layer, int L, int BS, int KVH, int h) {
    constexpr int TP = ATTN_TP, STAGE = TcShape<D, Q8>::TP * PITCH;
#pragma unroll
    for (int i = 0; i < NST - 1; i++) {
        if (i < ntiles) {
            tc_issue<D, Q8, PITCH>(stages + i * STAGE, pool, table, 0, start + i * TP, end, layer, L, BS, KVH, h,
                                   fresh, late);
            if (v_early)
                tc_issue<D, Q8, PITCH>(stages + (ntiles + i) * STAGE, pool, table, 1, start + i * TP, end, layer, L,
                                       BS, KVH, h, fresh, late);
        }
        cp_commit();
    }
}
template <int D, int Q8, int PITCH, int NST>
__device__ __noinline__ void tc_fresh_rows(unsigned char* stages, const unsigned char* pool, const int* table,
                                              int start, int end, int ntiles, bool v_early, int fresh, int layer,
                                              int L, int BS, int KVH, int h) {
    constexpr int TP = ATTN_TP, STAGE = TcShape<D, Q8>::TP * PITCH;
    const int t = (fresh - start) / TP;
    if (fresh < start || fresh >= end || t >= NST - 1) return;  // not queued by tc_prologue
    tc_fresh_row<D, Q8, PITCH>(stages + t * STAGE, pool, table, 0, start + t * TP, fresh, layer, L, BS, KVH, h);
    if (v_early)
        tc_fresh_row<D, Q8, PITCH>(stages + (ntiles + t) * STAGE, pool, table, 1, start + t * TP, fresh, layer, L, BS,
                                   KVH, h);
}

// q8_0 stage -> fp16 tile (the row offsets keep the pool's alignment: kv_load's reads hold).
template <int D>
__device__ __forceinline__ void tc_convert(const unsigned char* stage, __half* tile) {
    using T = TcShape<D, 1>;
    for (int c = threadIdx.x; c < T::TP * (D / 8); c += 256) {
        const int p = c / (D / 8), sub = c % (D / 8);
        *(uint4*)(tile + p * T::LDK + sub * 8) = kv_half8<true>(kv_load<true>(stage, (long long)p * T::RW, sub), sub);
    }
}

// attn_tc's softmax per head: warp j owns head j (rows past G get P = 0). Columns past cnt (to
// the tile edge) get P = 0. P[j][i] (bytes 2i of row j) overwrites S[j][i / 2]: a pass over 32
// columns writes floats [16 k, 16 k + 16) of the row, read by this pass or an earlier one,
// once the warp's reads are done (__syncwarp); later passes read from float 32 (k + 1) on.
template <int LDS, int LDP>
__device__ __forceinline__ void tc_softmax(const float* S, __half* P, float (*stat)[8], int G, int cnt, int padded) {
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    if (warp < G) {
        const float* sr = S + warp * LDS;
        float m = -INFINITY;
#pragma unroll 1
        for (int i = lane; i < cnt; i += 32) m = fmaxf(m, sr[i]);
#pragma unroll
        for (int o = 16; o; o >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffff, m, o));
        float l = 0.f;
#pragma unroll 1
        for (int i = lane; i < padded; i += 32) {
            const float sv = i < cnt ? sr[i] : 0.f;
            __syncwarp();
            const __half p = __float2half(i < cnt ? __expf(sv - m) : 0.f);
            P[warp * LDP + i] = p;
            l += __half2float(p);  // the sum of the values the products use
        }
#pragma unroll
        for (int o = 16; o; o >>= 1) l += __shfl_xor_sync(0xffffffff, l, o);
        if (lane == 0) { stat[0][warp] = m; stat[1][warp] = l; }
    } else {
#pragma unroll 1
        for (int i = lane; i < padded; i += 32) P[warp * LDP + i] = __float2half(0.f);
    }
}

// attn_tc's end, once the KG k-groups' partial O sit in S as [KG][8 heads][D]: their sum is the
// split's O (divided by its l when the split is the only one), then the last split's block
// merges (attn_merge_last, over S's memory).
template <int D, int KG>
__device__ __forceinline__ void tc_finish(float* S, const float (*stat)[8], int h, int G, int split, int nsplit,
                                          int used, float* part_o, float* part_ml, float* out, int* sem,
                                          int8_t* oq, float2* os) {
    __syncthreads();
#pragma unroll 1
    for (int i = threadIdx.x; i < G * D; i += 256) {
        const int j = i / D, d = i % D;
        float sum = 0.f;
#pragma unroll
        for (int kk = 0; kk < KG; kk++) sum += S[(kk * 8 + j) * D + d];
        if (used == 1) {
            const long long o = (long long)(h * G + j) * D + d;
            out[o] = sum / stat[1][j];
            if (oq) quant_warp32(sum / stat[1][j], oq + (o & ~31ll), os + (o >> 5));  // whole warps: G D % 32 == 0
        } else {
            part_o[((long long)(h * G + j) * nsplit + split) * D + d] = sum;
        }
    }
    if (used == 1) return;
    if (threadIdx.x < G) {
        const long long pi = (long long)(h * G + threadIdx.x) * nsplit + split;
        part_ml[pi * 2] = stat[0][threadIdx.x];
        part_ml[pi * 2 + 1] = stat[1][threadIdx.x];
    }
    static_assert(8 * 32 * ((D + 31) / 32) <= 8 * (ATTN_TC_SPLIT + 4), "the merge's sums fit in S");
    attn_merge_last<D>(h, G, nsplit, used, part_o, part_ml, out, sem, S, oq, os);
}

template <int D, int Q8>
__global__ void __launch_bounds__(256) attn_tc(
    const float* __restrict__ q, const void* __restrict__ pool_, const int* __restrict__ table,
    int layer, int L, int BS, int KVH, int G, int n_host, const int* pos_dev, float scale,
    float* __restrict__ part_o, float* __restrict__ part_ml, int nsplit, float* __restrict__ out,
    int* sem, int early, int8_t* __restrict__ oq, float2* __restrict__ os) {
    using T = TcShape<D, Q8>;
    constexpr int TP = T::TP, NST = T::NST, LDK = T::LDK, LDS = T::LDS, LDP = T::LDP, LDQ = T::LDQ;
    constexpr int MT = D / 16;                // pass 2: 16-row tiles of O^T
    constexpr int KG = MT >= 8 ? 1 : 8 / MT;  // k-groups (warps splitting a tile's positions)
    constexpr int MPW = MT >= 8 ? MT / 8 : 1; // m-tiles a warp owns
    static_assert(KG * 8 * D <= 8 * LDS, "O partials reuse the score buffer");
    const unsigned char* pool = (const unsigned char*)pool_;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* stages = smem;                                   // NST x [TP][PITCH]
    __half* ctile = (__half*)(smem + NST * T::STAGE);               // q8_0: [TP][LDK]
    float* S = (float*)(smem + NST * T::STAGE + T::TILE);           // [8][LDS]; then O partials
    __half* P = (__half*)S;                                         // [8][LDP], over S
    __half* Qs = (__half*)(S + 8 * LDS);                            // [8][LDQ]
    __shared__ float stat[2][8];
    if (!early) PDL_WAIT();
    const int h = blockIdx.x, split = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const int n = pos_dev ? *pos_dev + 1 : n_host;  // set before the graph runs (tc_prologue)
    // At least two tiles a split: a short context is one split with no merge, and up to 4K
    // positions fewer, longer splits (H100: 21-27% less attention time at ctx 65 and 4K).
    const int per = max(2 * TP, ((n + nsplit - 1) / nsplit + TP - 1) / TP * TP);
    const int used = (n + per - 1) / per;  // slices holding positions (attn_merge_last)
    const int start = split * per, end = min(n, start + per);
    if (split >= used) return;
    const int cnt = end - start, padded = (cnt + TP - 1) / TP * TP, ntiles = padded / TP;
    // The fp16 rows a tile's products read: stage st itself, or the converted q8_0 tile.
    auto rows_of = [&](int st) -> const __half* {
        if constexpr (Q8) {
            tc_convert<D>(stages + st * T::STAGE, ctile);
            __syncthreads();
            return ctile;
        } else {
            return (const __half*)(stages + st * T::STAGE);
        }
    };
    // A split of at most NST / 2 tiles (short contexts) loads its V tiles with its K tiles,
    // into the stages after them: one DRAM round trip before the products, not two. Longer
    // splits stream V into the stages K used, once the scores are done.
    const bool v_early = 2 * ntiles <= NST;
    tc_prologue<D, Q8, T::PITCH, NST>(stages, pool, table, start, end, ntiles, v_early, n - 1, !early, layer, L, BS,
                                      KVH, h);
    if (early) {
        PDL_WAIT();
        tc_fresh_rows<D, Q8, T::PITCH, NST>(stages, pool, table, start, end, ntiles, v_early, n - 1, layer, L, BS,
                                            KVH, h);
    }
    for (int i = threadIdx.x; i < 8 * D; i += 256) {
        const int j = i / D, d = i % D;
        Qs[j * LDQ + d] = __float2half(j < G ? q[(long long)(h * G + j) * D + d] * scale : 0.f);
    }
    __syncthreads();
    unsigned qb[D / 16][2];  // Q^T, pass 1's B operand, for every k-step
#pragma unroll
    for (int k0 = 0; k0 < D; k0 += 32) {
        unsigned x[4];
        ldsm4(x, Qs + (lane & 7) * LDQ + k0 + 8 * (lane >> 3));
        qb[k0 / 16][0] = x[0]; qb[k0 / 16][1] = x[1];
        qb[k0 / 16 + 1][0] = x[2]; qb[k0 / 16 + 1][1] = x[3];
    }
    // Pass 1: scores. Warp w < TP / 16 takes positions [16 w, 16 w + 16) of each tile.
#pragma unroll 1
    for (int i = 0; i < ntiles; i++) {
        cp_wait<NST - 2>();
        __syncthreads();  // tile i has landed for every thread; tile i - 1's stage is free
        if (i + NST - 1 < ntiles)
            tc_issue<D, Q8>(stages + ((i + NST - 1) % NST) * T::STAGE, pool, table, 0, start + (i + NST - 1) * TP,
                            end, layer, L, BS, KVH, h, n - 1, true);
        cp_commit();
        const __half* tile = rows_of(i % NST);
        if (warp < TP / 16) {
            float c[4] = {0.f, 0.f, 0.f, 0.f};
            const __half* rows = tile + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LDK + 8 * (lane >> 4);
#pragma unroll
            for (int k = 0; k < D / 16; k++) {
                unsigned a[4];
                ldsm4(a, rows + k * 16);
                mma16816(c, a, qb[k][0], qb[k][1]);
            }
            const int p0 = i * TP + warp * 16 + g;
            S[(2 * t4) * LDS + p0] = c[0];
            S[(2 * t4 + 1) * LDS + p0] = c[1];
            S[(2 * t4) * LDS + p0 + 8] = c[2];
            S[(2 * t4 + 1) * LDS + p0 + 8] = c[3];
        }
    }
    cp_wait<0>();
    __syncthreads();  // every score is written; the stages are free for V
#pragma unroll
    for (int i = 0; i < NST - 1; i++) {  // V's first tiles load during the softmax
        if (i < ntiles && !v_early)
            tc_issue<D, Q8>(stages + i * T::STAGE, pool, table, 1, start + i * TP, end, layer, L, BS, KVH, h, n - 1,
                            true);
        cp_commit();
    }
    tc_softmax<LDS, LDP>(S, P, stat, G, cnt, padded);
    // Pass 2: O^T = V^T P^T. Warp w owns m-tiles (16 dims) w + 8 i, or with KG > 1 m-tile
    // w % MT and the k-steps (16 positions) k = w / MT mod KG of each tile.
    const int mt0 = warp % (8 / KG), kg = warp / (8 / KG);
    float o[MPW][4];
#pragma unroll
    for (int i = 0; i < MPW; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
#pragma unroll 1
    for (int i = 0; i < ntiles; i++) {
        cp_wait<NST - 2>();
        __syncthreads();  // tile i landed; tile i - 1's products (or the softmax) are done
        if (i + NST - 1 < ntiles)
            tc_issue<D, Q8>(stages + ((i + NST - 1) % NST) * T::STAGE, pool, table, 1, start + (i + NST - 1) * TP,
                            end, layer, L, BS, KVH, h, n - 1, true);
        cp_commit();
        const __half* tile = rows_of(v_early ? ntiles + i : i % NST);
#pragma unroll
        for (int k = kg; k < TP / 16; k += KG) {
            unsigned b[2];
            ldsm2(b, P + (lane & 7) * LDP + i * TP + 16 * k + 8 * ((lane >> 3) & 1));
#pragma unroll
            for (int mi = 0; mi < MPW; mi++) {
                unsigned a[4];
                ldsm4t(a, tile + (16 * k + (lane & 7) + 8 * (lane >> 4)) * LDK + (mt0 + 8 * mi) * 16 +
                              8 * ((lane >> 3) & 1));
                mma16816(o[mi], a, b[0], b[1]);
            }
        }
    }
    __syncthreads();  // S is free: it takes the k-groups' partial O, [KG][8 heads][D]
    float* ob = S + kg * 8 * D;
#pragma unroll
    for (int i = 0; i < MPW; i++) {
        const int d0 = (mt0 + 8 * i) * 16 + g;
        ob[(2 * t4) * D + d0] = o[i][0];
        ob[(2 * t4 + 1) * D + d0] = o[i][1];
        ob[(2 * t4) * D + d0 + 8] = o[i][2];
        ob[(2 * t4 + 1) * D + d0 + 8] = o[i][3];
    }
    tc_finish<D, KG>(S, stat, h, G, split, nsplit, used, part_o, part_ml, out, sem, oq, os);
}

// Decode attention over a q8_0 pool on tensor cores, the rows read where they land (attn_tq8):
// attn_tc<D, 1> converted each staged tile to an fp16 tile first (all threads, a barrier a
// tile, 17 KB of shared memory more); here each warp turns the int8 values it needs straight
// into mma fragments (0x6400 | (q ^ 0x80) is the fp16 1152 + q, exact), so a block holds only
// its stages (4 blocks an SM for head_dim 128 instead of 2). Same grid, splits, softmax and
// merge as attn_tc.
//
// A q8_0 row is D / 32 blocks of 34 bytes (fp16 scale, 32 int8); block b starts at 34 b, so
// the int8 values of even blocks are 2 bytes off a 4-byte boundary. A block's 32 values are
// read as 8 aligned "logical words" L_j of 4 values: odd blocks L_j = values 4j..4j+3; even
// blocks L_j = values (4j - 2 .. 4j + 1) mod 32, L_0 put together from the words holding
// values 30, 31 and 0, 1. Value e of L_j is dimension tq8_dim(b, j, e).
// Pass 1, S^T = K Q^T: dot products do not care in which order the dimensions come, so
// thread (g, t) feeds L_{t + 4s} of rows g and g + 8 as k-step s of the block (two
// m16n8k16 a block, exact int8 values, a fresh fp32 accumulator), and Q's fragments are
// gathered in the same order once; the block's sums are scaled by the rows' fp32 scales.
// A stage row is PITCH bytes, 4 times an odd number of words: the 32 lanes' words (row g,
// word t + const) then fall in 32 different banks, in pass 1 and in pass 2 (row 2t + const,
// word g + const); at the pool's 136 bytes (34 words) a pass-1 load took 4 wavefronts.
// Pass 2, O^T = V^T P^T: warp w takes block w mod D/32 (two 16-row m-tiles of O^T, rows
// ordered by tq8_dim) and every (8 / (D / 32))-th k-step; thread (g, t) reads L_g of the
// positions 2t, 2t + 1, 2t + 8, 2t + 9 of the k-step (byte_perm pairs them into fragments)
// and scales them by the positions' scales in fp16 (V's values as attn_tc<D, 1> rounds them).
__device__ __forceinline__ int tq8_dim(int b, int j, int e) {
    return 32 * b + ((b & 1) ? 4 * j + e : (4 * j + 30 + e) & 31);
}
__device__ __forceinline__ unsigned lds32(const unsigned char* p) { return *(const unsigned*)p; }
// Logical word j of the q8_0 block b of a row is byte_perm(the row's word at tq8_wa(b, j),
// its word at tq8_wb(b, j), 0x7610) (pair offset 68 (b / 2)): even b, j = 0, values 30, 31
// from word 8 of the pair and 0, 1 from its word 0; otherwise one word (twice: the byte_perm
// of a word with itself is the word). A thread's j is fixed by its lane, so it works the
// offsets out once, not a tile (pass 2), or has them at compile time (pass 1, unrolled).
__device__ __forceinline__ int tq8_wb(int b, int j) { return 68 * (b >> 1) + ((b & 1) ? 36 + 4 * j : 4 * j); }
__device__ __forceinline__ int tq8_wa(int b, int j) { return (b & 1) || j ? tq8_wb(b, j) : 68 * (b >> 1) + 32; }
// The 4 int8 values of a word (already ^ 0x80) as two fp16 pairs: (e0, e1) and (e2, e3).
__device__ __forceinline__ void tq8_halves(unsigned u, unsigned& lo, unsigned& hi) {
    const __half2 off = __float2half2_rn(1152.f);
    const unsigned a = __byte_perm(u, 0x64646464u, 0x4140), c = __byte_perm(u, 0x64646464u, 0x4342);
    __half2 x = __hsub2(*(const __half2*)&a, off), y = __hsub2(*(const __half2*)&c, off);
    lo = *(unsigned*)&x;
    hi = *(unsigned*)&y;
}

template <int D>
struct Tq8Shape {
    // Stages: 6 at head_dim 64 (3 blocks an SM), 4 at 128 (4 blocks an SM), 3 at 256. On an H100
    // (c92b69c, all layers at 32K) 6 stages took SmolLM2's shape from 0.898 to 0.829 ms and the
    // 8B's from 1.746 to 2.180 ms (the 4th block an SM is worth more there).
    static constexpr int TP = ATTN_TP, NST = D <= 64 ? 6 : (D <= 128 ? 4 : 3), NB = D / 32;
    static constexpr int RW = NB * Q8B, SMAX = ATTN_TC_SPLIT;
    static constexpr int PW = (RW / 4 + 3) / 4 * 4, PITCH = 4 * (PW % 8 ? PW : PW + 4);  // 80, 144, 272
    static constexpr int STAGE = TP * PITCH;
    static constexpr int LDS = SMAX + 4, LDP = 2 * LDS, LDQ = D + 8;
    static constexpr int KG = 8 / NB;  // pass 2: warps sharing a block's dims (k-groups)
    static constexpr int NCH = PITCH / 16;  // 16-byte chunks a row's copy takes (tq8_issue)
    // A row starts at a multiple of the largest power of two dividing RW (4, 8, 16 bytes at
    // head_dim 64, 128, 256; the pool is 256-byte aligned), so at most MAXOFF past a 16-byte
    // boundary.
    static constexpr int MAXOFF = (RW & -RW) >= 16 ? 0 : 16 - (RW & -RW);
    static_assert(PITCH % 16 == 0 && PITCH >= RW + MAXOFF, "a row at any offset it can have fits its slot");
    static constexpr int BYTES = NST * STAGE + 8 * LDS * 4 + 8 * LDQ * 2;
};

// cp.async of the first n (0..16) bytes of a 16-byte chunk; the rest of the 16 shared bytes
// are zero-filled, and nothing past src + n is read.
__device__ __forceinline__ void cp_async16n(void* dst, const void* src, int n) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(dst)), "l"(src), "r"(n) : "memory");
}

// attn_tq8's tile copy: positions [base, base + TP) of plane kv (tile `tile` of the split)
// into a stage. A tile in one paged block (BS a multiple of TP, the default) is copied by
// 16-byte cp.async.cg chunks (through L2), each row from the 16-byte boundary at or below
// its start: q8_0 rows are 136 bytes at head_dim 128 and 68 at 64, only 8- or 4-byte
// aligned, and tc_issue's copy takes 17 chunks of 8 or 4 bytes a row, 9 or 5 here. Row p of
// the tile then starts tq8_off(p) bytes into its slot; the bytes before it are the end of
// the row before it in the pool (the pool is 256-byte aligned, so there is one), and the
// last chunk reads only up to the row's end (cp.async's src-size), so nothing past the pool
// is read. Positions past end are zeros.
// Thread c < R NCH takes chunk c % NCH of the rows c / NCH + R r (r < ROUNDS): R RW is a
// multiple of 16, so a thread's rows share their offset and byte count, worked out once a
// tile, and the tile's first row is one shared-memory read (tq8_tile_offsets: the split's
// table lookups and divisions by BS done once). Inlined: the out-of-line copy that worked
// out every chunk's row, offset, lookup and division was about half the kernel's
// instructions (ncu at 32K, 448b6fc: 3.4K warp instructions a tile, issue slots 57% busy,
// DRAM 35%).
// The newest row (fresh, written by rope_kv just before this kernel) is left out before
// PDL_WAIT (late false), for tq8_fresh_rows; after it, cp.async.cg reads it from L2 as any
// other row. Other block sizes take tc_issue's copy (rows at offset 0, a lookup a chunk).
__host__ __device__ constexpr int tq8_rows(int r, int rw) { return (r * rw) % 16 ? tq8_rows(r - 1, rw) : r; }
template <int D>
struct Tq8Copy {
    static constexpr int NCH = Tq8Shape<D>::NCH, R = tq8_rows(256 / NCH, Tq8Shape<D>::RW);  // 48, 28, 15 rows
    static constexpr int ROUNDS = (ATTN_TP + R - 1) / R;                                     // 2, 3, 5
    static_assert(R * NCH <= 256 && R * Tq8Shape<D>::RW % 16 == 0, "a round's rows share their offset");
};
// Pool offsets of the first row of each tile of a split (plane K; V's are BS KVH RW on).
template <int D>
__device__ __forceinline__ void tq8_tile_offsets(long long* toff, const int* table, int start, int ntiles,
                                                 int layer, int L, int BS, int KVH, int h) {
    if (BS % ATTN_TP == 0 && (int)threadIdx.x < ntiles)
        toff[threadIdx.x] = kv_index(table, start + threadIdx.x * ATTN_TP, layer, 0, h, L, BS, KVH, Tq8Shape<D>::RW);
}
template <int D>
__device__ __forceinline__ void tq8_issue(unsigned char* stage, const unsigned char* pool, const int* table,
                                          const long long* toff, int kv, int tile, int start, int end, int layer,
                                          int L, int BS, int KVH, int h, int fresh, bool late) {
    using T = Tq8Shape<D>;
    using C = Tq8Copy<D>;
    const int base = start + tile * T::TP;
    if (BS % T::TP) {
        tc_issue<D, 1, T::PITCH>(stage, pool, table, kv, base, end, layer, L, BS, KVH, h, fresh, late);
        return;
    }
    const int c = threadIdx.x;
    if (c >= C::R * C::NCH) return;
    const int p0 = c / C::NCH, k = c - p0 * C::NCH;
    const int pitch = KVH * T::RW, off = ((h + p0 * KVH) * T::RW) & 15;
    const int nbk = max(0, min(16, off + T::RW - 16 * k));
    // Every row of the tile lies in its paged block, so src is in the pool past end too (the
    // copy then reads nothing: src-size 0).
    const unsigned char* src = pool + toff[tile] + (long long)kv * BS * pitch + (p0 * pitch - off + 16 * k);
    unsigned char* dst = stage + p0 * T::PITCH + 16 * k;
    const int step = C::R * pitch;
#pragma unroll
    for (int r = 0; r < C::ROUNDS; r++) {
        const int p = p0 + C::R * r;
        if ((r + 1 < C::ROUNDS || p < T::TP) && (late || base + p != fresh))
            cp_async16n(dst + r * C::R * T::PITCH, src + r * step, base + p < end ? nbk : 0);
    }
}
// Where row p of a tile starts in its slot (tq8_issue): the pool offset of the row mod 16,
// ((h + p KVH) RW) mod 16, as a tile starts at a multiple of TP positions of a block whose
// planes are multiples of 16 bytes. p and p + 8 share it (8 RW is a multiple of 16). With
// KVH RW not a multiple of 16 (an odd number of KV heads, or head_dim 64) rows' offsets differ
// and some of the loads that Tq8Shape's PITCH keeps in distinct banks take two wavefronts.
template <int D>
__device__ __forceinline__ int tq8_off(int p, int BS, int KVH, int h) {
    return BS % ATTN_TP ? 0 : ((h + p * KVH) * Tq8Shape<D>::RW) & 15;
}

// attn_tq8's first NST - 1 tiles of a split: tc_prologue's schedule with tq8_issue's copy,
// tq8_fresh_rows the newest row after PDL_WAIT.
template <int D>
__device__ __forceinline__ void tq8_prologue(unsigned char* stages, const unsigned char* pool, const int* table,
                                             const long long* toff, int start, int end, int ntiles, bool v_early,
                                             int fresh, bool late, int layer, int L, int BS, int KVH, int h) {
    using T = Tq8Shape<D>;
#pragma unroll
    for (int i = 0; i < T::NST - 1; i++) {
        if (i < ntiles) {
            tq8_issue<D>(stages + i * T::STAGE, pool, table, toff, 0, i, start, end, layer, L, BS, KVH, h, fresh,
                         late);
            if (v_early)
                tq8_issue<D>(stages + (ntiles + i) * T::STAGE, pool, table, toff, 1, i, start, end, layer, L, BS,
                             KVH, h, fresh, late);
        }
        cp_commit();
    }
}
template <int D>
__device__ __noinline__ void tq8_fresh_rows(unsigned char* stages, const unsigned char* pool, const int* table,
                                            int start, int end, int ntiles, bool v_early, int fresh, int layer,
                                            int L, int BS, int KVH, int h) {
    using T = Tq8Shape<D>;
    const int t = (fresh - start) / T::TP;
    if (fresh < start || fresh >= end || t >= T::NST - 1) return;  // not queued by tq8_prologue
#pragma unroll 1
    for (int kv = 0; kv < (v_early ? 2 : 1); kv++) {
        const unsigned* src = (const unsigned*)(pool + kv_index(table, fresh, layer, kv, h, L, BS, KVH, T::RW));
        const int p = fresh - start - t * T::TP;
        unsigned* dst = (unsigned*)(stages + (kv ? ntiles + t : t) * T::STAGE + p * T::PITCH + tq8_off<D>(p, BS, KVH, h));
        for (int w = threadIdx.x; w < T::RW / 4; w += 256) dst[w] = __ldcg(src + w);
    }
}

template <int D>
__global__ void __launch_bounds__(256, D <= 128 ? 4 : 1) attn_tq8(  // 4 blocks an SM: <= 64 registers
    const float* __restrict__ q, const void* __restrict__ pool_, const int* __restrict__ table,
    int layer, int L, int BS, int KVH, int G, int n_host, const int* pos_dev, float scale,
    float* __restrict__ part_o, float* __restrict__ part_ml, int nsplit, float* __restrict__ out,
    int* sem, int early, int8_t* __restrict__ oq, float2* __restrict__ os) {
    using T = Tq8Shape<D>;
    constexpr int TP = T::TP, NST = T::NST, NB = T::NB, PITCH = T::PITCH, LDS = T::LDS, LDP = T::LDP, LDQ = T::LDQ;
    static_assert(T::PITCH % 8 == 0 && (T::PITCH / 16) % 2 == 1 && T::PITCH >= T::RW, "rows in distinct banks");
    constexpr int KG = T::KG;
    static_assert(KG * 8 * D <= 8 * LDS, "O partials reuse the score buffer");
    const unsigned char* pool = (const unsigned char*)pool_;
    extern __shared__ __align__(128) unsigned char smem[];
    unsigned char* stages = smem;                         // NST x [TP][PITCH]
    float* S = (float*)(smem + NST * T::STAGE);           // [8][LDS]; then O partials
    __half* P = (__half*)S;                               // [8][LDP], over S
    __half* Qs = (__half*)(S + 8 * LDS);                  // [8][LDQ]
    __shared__ float stat[2][8];
    __shared__ long long toff[T::SMAX / TP];
    if (!early) PDL_WAIT();
    const int h = blockIdx.x, split = blockIdx.y, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const int n = pos_dev ? *pos_dev + 1 : n_host;  // set before the graph runs (tc_prologue)
    // At least two tiles a split: a short context is one split with no merge, and up to 4K
    // positions fewer, longer splits (H100: 21-27% less attention time at ctx 65 and 4K).
    const int per = max(2 * TP, ((n + nsplit - 1) / nsplit + TP - 1) / TP * TP);
    const int used = (n + per - 1) / per;
    const int start = split * per, end = min(n, start + per);
    if (split >= used) return;
    const int cnt = end - start, padded = (cnt + TP - 1) / TP * TP, ntiles = padded / TP;
    const bool v_early = 2 * ntiles <= NST;
    tq8_tile_offsets<D>(toff, table, start, ntiles, layer, L, BS, KVH, h);
    __syncthreads();
    tq8_prologue<D>(stages, pool, table, toff, start, end, ntiles, v_early, n - 1, !early, layer, L, BS, KVH, h);
    if (early) {
        PDL_WAIT();
        tq8_fresh_rows<D>(stages, pool, table, start, end, ntiles, v_early, n - 1, layer, L, BS, KVH, h);
    }
    for (int i = threadIdx.x; i < 8 * D; i += 256) {
        const int j = i / D, d = i % D;
        Qs[j * LDQ + d] = __float2half(j < G ? q[(long long)(h * G + j) * D + d] * scale : 0.f);
    }
    __syncthreads();
    // Q's B fragments in the logical-word order: block b, k-step s: (k 2t, 2t+1) are values
    // e 0, 1 of L_{t+4s}, (k 2t+8, 2t+9) values 2, 3; column g is head g.
    unsigned qb[NB][2][2];
#pragma unroll
    for (int b = 0; b < NB; b++)
#pragma unroll
        for (int st = 0; st < 2; st++)
#pragma unroll
            for (int half = 0; half < 2; half++) {
                const __half* qr = Qs + g * LDQ;
                __half2 v = __halves2half2(qr[tq8_dim(b, t4 + 4 * st, 2 * half)], qr[tq8_dim(b, t4 + 4 * st, 2 * half + 1)]);
                qb[b][st][half] = *(unsigned*)&v;
            }

    // Pass 1: scores. Warp w < TP / 16 takes positions [16 w, 16 w + 16) of each tile. Row g
    // of the warp's 16 starts at r1 in a stage (row g + 8 at r1 + 8 PITCH). Its words L_t
    // (k-step 0) and L_{t+4} (k-step 1) of block b are tq8_wa / tq8_wb unrolled: rA - r1 =
    // tq8_wa(0, t), rB - r1 = tq8_wb(0, t), plus 68 (b / 2), 36 more for odd b, 16 for L_{t+4}.
    const int r1 = (warp * 16 + g) * PITCH + tq8_off<D>(warp * 16 + g, BS, KVH, h);
    const int rA = r1 + (t4 ? 4 * t4 : 32), rB = r1 + 4 * t4;
#pragma unroll 1
    for (int i = 0; i < ntiles; i++) {
        cp_wait<NST - 2>();
        __syncthreads();  // tile i has landed for every thread; tile i - 1's stage is free
        if (i + NST - 1 < ntiles)
            tq8_issue<D>(stages + ((i + NST - 1) % NST) * T::STAGE, pool, table, toff, 0, i + NST - 1, start, end,
                         layer, L, BS, KVH, h, n - 1, true);
        cp_commit();
        if (warp < TP / 16) {
            const unsigned char* st = stages + (i % NST) * T::STAGE;
            float sc[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
            for (int b = 0; b < NB; b++) {
                unsigned w[2][2];  // [row g, g + 8][k-step]: L_t, L_{t+4}
#pragma unroll
                for (int y = 0; y < 2; y++) {
                    const int o = 68 * (b >> 1) + 8 * PITCH * y;
                    if (b & 1) {
                        w[y][0] = lds32(st + rB + o + 36);
                        w[y][1] = lds32(st + rB + o + 52);
                    } else {
                        w[y][0] = __byte_perm(lds32(st + rA + o), lds32(st + rB + o), 0x7610u);
                        w[y][1] = lds32(st + rB + o + 16);
                    }
                }
                float cb[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
                for (int s2 = 0; s2 < 2; s2++) {
                    unsigned a[4];
                    tq8_halves(w[0][s2] ^ 0x80808080u, a[0], a[2]);
                    tq8_halves(w[1][s2] ^ 0x80808080u, a[1], a[3]);
                    mma16816(cb, a, qb[b][s2][0], qb[b][s2][1]);
                }
                const float d0 = __half2float(*(const __half*)(st + r1 + b * Q8B));
                const float d1 = __half2float(*(const __half*)(st + r1 + 8 * PITCH + b * Q8B));
                sc[0] += d0 * cb[0];
                sc[1] += d0 * cb[1];
                sc[2] += d1 * cb[2];
                sc[3] += d1 * cb[3];
            }
            const int p0 = i * TP + warp * 16 + g;
            S[(2 * t4) * LDS + p0] = sc[0];
            S[(2 * t4 + 1) * LDS + p0] = sc[1];
            S[(2 * t4) * LDS + p0 + 8] = sc[2];
            S[(2 * t4 + 1) * LDS + p0 + 8] = sc[3];
        }
    }
    cp_wait<0>();
    __syncthreads();  // every score is written; the stages are free for V
#pragma unroll
    for (int i = 0; i < NST - 1; i++) {
        if (i < ntiles && !v_early)
            tq8_issue<D>(stages + i * T::STAGE, pool, table, toff, 1, i, start, end, layer, L, BS, KVH, h, n - 1, true);
        cp_commit();
    }
    tc_softmax<LDS, LDP>(S, P, stat, G, cnt, padded);
    // Pass 2. o[m][*]: m-tile m of block b: row g is dimension tq8_dim(b, g, 2m), row g + 8
    // tq8_dim(b, g, 2m + 1); columns 2t, 2t + 1 are heads. Positions 2t and 2t + 1 of k-step
    // kg start at e0 and o0 in a stage; those of k-step kg + KG k' and the +8 ones follow at
    // multiples of PITCH. Word L_g of each: tq8_wa, tq8_wb.
    const int b = warp % NB, kg = warp / NB, wa = tq8_wa(b, g), wb = tq8_wb(b, g);
    const int e0 = (16 * kg + 2 * t4) * PITCH + tq8_off<D>(2 * t4, BS, KVH, h);
    const int o0 = (16 * kg + 2 * t4 + 1) * PITCH + tq8_off<D>(2 * t4 + 1, BS, KVH, h);
    const __half* pg = P + g * LDP + 16 * kg + 2 * t4;
    float o[2][4];
#pragma unroll
    for (int m = 0; m < 2; m++) o[m][0] = o[m][1] = o[m][2] = o[m][3] = 0.f;
#pragma unroll 1
    for (int i = 0; i < ntiles; i++) {
        cp_wait<NST - 2>();
        __syncthreads();  // tile i landed; tile i - 1's products (or the softmax) are done
        if (i + NST - 1 < ntiles)
            tq8_issue<D>(stages + ((i + NST - 1) % NST) * T::STAGE, pool, table, toff, 1, i + NST - 1, start, end,
                         layer, L, BS, KVH, h, n - 1, true);
        cp_commit();
        const unsigned char* tile = stages + (v_early ? ntiles + i : i % NST) * T::STAGE;
#pragma unroll
        for (int kk = 0; kk < TP / 16 / KG; kk++) {  // k-step kg + KG kk: positions 2t, 2t+1, 2t+8, 2t+9
            unsigned w[4];
            __half dv[4];
#pragma unroll
            for (int x = 0; x < 4; x++) {
                const unsigned char* rx = tile + ((x & 1) ? o0 : e0) + (16 * KG * kk + 8 * (x >> 1)) * PITCH;
                w[x] = __byte_perm(lds32(rx + wa), lds32(rx + wb), 0x7610u) ^ 0x80808080u;
                dv[x] = *(const __half*)(rx + b * Q8B);
            }
            const __half2 d01 = __halves2half2(dv[0], dv[1]), d23 = __halves2half2(dv[2], dv[3]);
            unsigned pb[2];
            pb[0] = *(const unsigned*)(pg + i * TP + 16 * KG * kk);
            pb[1] = *(const unsigned*)(pg + i * TP + 16 * KG * kk + 8);
#pragma unroll
            for (int m = 0; m < 2; m++) {
                // values 2m, 2m + 1 of each word: positions paired (2t with 2t+1, 2t+8 with 2t+9)
                const unsigned sel = m ? 0x7362u : 0x5140u;
                const unsigned u01 = __byte_perm(w[0], w[1], sel), u23 = __byte_perm(w[2], w[3], sel);
                unsigned a[4];
                tq8_halves(u01, a[0], a[1]);
                tq8_halves(u23, a[2], a[3]);
                __half2* ah = (__half2*)a;
                ah[0] = __hmul2(ah[0], d01);
                ah[1] = __hmul2(ah[1], d01);
                ah[2] = __hmul2(ah[2], d23);
                ah[3] = __hmul2(ah[3], d23);
                mma16816(o[m], a, pb[0], pb[1]);
            }
        }
    }
    __syncthreads();  // S is free: it takes the k-groups' partial O, [KG][8 heads][D]
    float* ob = S + kg * 8 * D;
#pragma unroll
    for (int m = 0; m < 2; m++) {
        const int d0 = tq8_dim(b, g, 2 * m), d1 = tq8_dim(b, g, 2 * m + 1);
        ob[(2 * t4) * D + d0] = o[m][0];
        ob[(2 * t4 + 1) * D + d0] = o[m][1];
        ob[(2 * t4) * D + d1] = o[m][2];
        ob[(2 * t4 + 1) * D + d1] = o[m][3];
    }
    tc_finish<D, KG>(S, stat, h, G, split, nsplit, used, part_o, part_ml, out, sem, oq, os);
}

// Prefill attention on tensor cores (flash attention 2, causal, GQA; head_dim 64 or 128; fp16
// or q8_0 pools). Grid (ceil(T G / 128), KVH), 256 threads. A block owns 128 query rows of one
// KV head, row r = (token t, head j) with t = r / G; warp w owns rows [16 w, 16 w + 16). Keys
// stream in tiles of 64 (registers -> shared memory as fp16, the next tile's loads in flight
// during the products) up to the block's last causal position; per tile S = Q K^T
// (m16n8k16), an online softmax in registers (a thread holds rows g and g + 8), P packed to
// fp16 as the A operand of O += P V. Row t sees keys [0, pos0 + t]. out (T, H * D) fp32.
constexpr int PF_ROWS = 128, PF_TP = 64;

template <int D, int Q8, int PER>
__device__ __forceinline__ void pf_load(uint4 (&r)[PER], const void* pool, const int* table, int kv,
                                        int base, int end, int layer, int L, int BS, int KVH, int h) {
    constexpr int CH = D / 8, RW = Q8 ? D / 32 * Q8B : D;
    if (BS % PF_TP == 0) {  // the tile lies in one paged block (tc_issue): one lookup a tile
        const long long row0 = kv_index(table, base, layer, kv, h, L, BS, KVH, RW);
#pragma unroll
        for (int i = 0; i < PER; i++) {
            const int c = threadIdx.x + 256 * i, p = c / CH;
            r[i] = base + p < end ? kv_load<Q8>(pool, row0 + (long long)p * KVH * RW, c % CH)
                                  : make_uint4(0, 0, 0, 0);
        }
        return;
    }
#pragma unroll
    for (int i = 0; i < PER; i++) {
        const int c = threadIdx.x + 256 * i, p = base + c / CH;
        r[i] = p < end ? kv_load<Q8>(pool, kv_index(table, p, layer, kv, h, L, BS, KVH, RW), c % CH)
                       : make_uint4(0, 0, 0, 0);
    }
}

template <int D, int Q8, int PER>
__device__ __forceinline__ void pf_store(const uint4 (&r)[PER], __half* tile) {
    constexpr int CH = D / 8, LDK = D + 8;
#pragma unroll
    for (int i = 0; i < PER; i++) {
        const int c = threadIdx.x + 256 * i;
        *(uint4*)(tile + (c / CH) * LDK + (c % CH) * 8) = kv_half8<Q8>(r[i], c % CH);
    }
}

__device__ __forceinline__ unsigned pack_half2(float a, float b) {
    __half2 v = __floats2half2_rn(a, b);
    return *(unsigned*)&v;
}

template <int D, int Q8>
__global__ void __launch_bounds__(256) attn_prefill_tc(
    const float* __restrict__ q, const void* __restrict__ pool, const int* __restrict__ table,
    int layer, int L, int BS, int KVH, int G, int T, int pos0, float scale, float* __restrict__ out) {
    constexpr int TP = PF_TP, LDK = D + 8, NT = D / 8, PER = TP * (D / 8) / 256;
    extern __shared__ __align__(128) unsigned char smem[];
    __half* Qs = (__half*)smem;                 // [PF_ROWS][LDK]
    __half* Ks = Qs + PF_ROWS * LDK;            // [TP][LDK]
    __half* Vs = Ks + TP * LDK;                 // [TP][LDK]
    const int h = blockIdx.y, r0 = blockIdx.x * PF_ROWS, H = KVH * G;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
    const int rows = T * G;
    const int last_row = min(rows, r0 + PF_ROWS) - 1;
    const int kend = pos0 + last_row / G + 1;  // keys this block needs
    uint4 kr[PER], vr[PER];
    pf_load<D, Q8, PER>(kr, pool, table, 0, 0, kend, layer, L, BS, KVH, h);
    pf_load<D, Q8, PER>(vr, pool, table, 1, 0, kend, layer, L, BS, KVH, h);
    for (int i = threadIdx.x; i < PF_ROWS * D; i += 256) {
        const int r = i / D, d = i % D, row = r0 + r;
        float v = 0.f;
        if (row < rows) v = q[((long long)(row / G) * H + h * G + row % G) * D + d] * scale;
        Qs[r * LDK + d] = __float2half(v);
    }
    // This thread's two rows (g and g + 8 of its warp's 16) and their last visible keys.
    const int ra = r0 + warp * 16 + g, rb = ra + 8;
    const int lim_a = ra < rows ? pos0 + ra / G : -1, lim_b = rb < rows ? pos0 + rb / G : -1;
    float o[NT][4];
#pragma unroll
    for (int i = 0; i < NT; i++) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
    float ma = -INFINITY, mb = -INFINITY, la = 0.f, lb = 0.f;
    for (int base = 0; base < kend; base += TP) {
        __syncthreads();  // the previous tile's products are done
        pf_store<D, Q8, PER>(kr, Ks);
        pf_store<D, Q8, PER>(vr, Vs);
        __syncthreads();
        if (base + TP < kend) {
            pf_load<D, Q8, PER>(kr, pool, table, 0, base + TP, kend, layer, L, BS, KVH, h);
            pf_load<D, Q8, PER>(vr, pool, table, 1, base + TP, kend, layer, L, BS, KVH, h);
        }
        // S = Q K^T: 16 rows x 64 keys a warp, 8 n-tiles of 8 keys.
        float sc[8][4];
#pragma unroll
        for (int nt = 0; nt < 8; nt++) sc[nt][0] = sc[nt][1] = sc[nt][2] = sc[nt][3] = 0.f;
#pragma unroll
        for (int k = 0; k < D / 16; k++) {
            unsigned a[4];
            ldsm4(a, Qs + (warp * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LDK + k * 16 + 8 * (lane >> 4));
#pragma unroll
            for (int nt = 0; nt < 8; nt += 2) {
                // B = K^T for keys [8 nt, 8 nt + 16): x4 = (keys nt, d k..k+7), (keys nt, d +8),
                // (keys nt + 1, d k..), (keys nt + 1, d +8).
                unsigned b[4];
                ldsm4(b, Ks + (nt * 8 + (lane & 7) + 8 * (lane >> 4)) * LDK + k * 16 + 8 * ((lane >> 3) & 1));
                mma16816(sc[nt], a, b[0], b[1]);
                mma16816(sc[nt + 1], a, b[2], b[3]);
            }
        }
        // Causal mask and the online softmax of rows a (g) and b (g + 8).
        float ta = -INFINITY, tb = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            const int kp = base + nt * 8 + 2 * t4;
            if (kp > lim_a) sc[nt][0] = -INFINITY;
            if (kp + 1 > lim_a) sc[nt][1] = -INFINITY;
            if (kp > lim_b) sc[nt][2] = -INFINITY;
            if (kp + 1 > lim_b) sc[nt][3] = -INFINITY;
            ta = fmaxf(ta, fmaxf(sc[nt][0], sc[nt][1]));
            tb = fmaxf(tb, fmaxf(sc[nt][2], sc[nt][3]));
        }
#pragma unroll
        for (int x = 1; x <= 2; x <<= 1) {
            ta = fmaxf(ta, __shfl_xor_sync(0xffffffff, ta, x));
            tb = fmaxf(tb, __shfl_xor_sync(0xffffffff, tb, x));
        }
        const float na = fmaxf(ma, ta), nb = fmaxf(mb, tb);
        const float ca = na == -INFINITY ? 1.f : __expf(ma - na), cb = nb == -INFINITY ? 1.f : __expf(mb - nb);
        float sa = 0.f, sb = 0.f;
        unsigned pa[4][4];  // P as the A operand, one k-step (16 keys) per entry
#pragma unroll
        for (int nt = 0; nt < 8; nt++) {
            const float p0 = na == -INFINITY ? 0.f : __expf(sc[nt][0] - na);
            const float p1 = na == -INFINITY ? 0.f : __expf(sc[nt][1] - na);
            const float p2 = nb == -INFINITY ? 0.f : __expf(sc[nt][2] - nb);
            const float p3 = nb == -INFINITY ? 0.f : __expf(sc[nt][3] - nb);
            sa += p0 + p1;
            sb += p2 + p3;
            // k-step nt / 2: a0a1 (row g, keys 2t..) and a2a3 (row g + 8) from the even n-tile,
            // a4a5 and a6a7 from the odd one.
            pa[nt / 2][(nt & 1) * 2] = pack_half2(p0, p1);
            pa[nt / 2][(nt & 1) * 2 + 1] = pack_half2(p2, p3);
        }
#pragma unroll
        for (int x = 1; x <= 2; x <<= 1) {
            sa += __shfl_xor_sync(0xffffffff, sa, x);
            sb += __shfl_xor_sync(0xffffffff, sb, x);
        }
        la = la * ca + sa;
        lb = lb * cb + sb;
        ma = na;
        mb = nb;
#pragma unroll
        for (int i = 0; i < NT; i++) {
            o[i][0] *= ca; o[i][1] *= ca; o[i][2] *= cb; o[i][3] *= cb;
        }
        // O += P V: n-tiles of 8 dims, two per ldmatrix.x4.trans.
#pragma unroll
        for (int ks = 0; ks < 4; ks++) {
#pragma unroll
            for (int nt = 0; nt < NT; nt += 2) {
                unsigned b[4];
                ldsm4t(b, Vs + (ks * 16 + (lane & 7) + 8 * ((lane >> 3) & 1)) * LDK + nt * 8 + 8 * (lane >> 4));
                mma16816(o[nt], pa[ks], b[0], b[1]);
                mma16816(o[nt + 1], pa[ks], b[2], b[3]);
            }
        }
    }
    // out[t, h * G + j] = O / l.
    const float ia = la > 0.f ? 1.f / la : 0.f, ib = lb > 0.f ? 1.f / lb : 0.f;
#pragma unroll
    for (int i = 0; i < NT; i++) {
        const int d = i * 8 + 2 * t4;
        if (ra < rows)
            *(float2*)(out + ((long long)(ra / G) * H + h * G + ra % G) * D + d) = make_float2(o[i][0] * ia, o[i][1] * ia);
        if (rb < rows)
            *(float2*)(out + ((long long)(rb / G) * H + h * G + rb % G) * D + d) = make_float2(o[i][2] * ib, o[i][3] * ib);
    }
}

// Dynamic shared memory of attn_tc<D, Q8> (the host reads it to launch).
extern "C" __global__ void attn_tc_smem(int* out) {
    out[0] = TcShape<64, 0>::BYTES; out[1] = TcShape<64, 1>::BYTES;
    out[2] = TcShape<128, 0>::BYTES; out[3] = TcShape<128, 1>::BYTES;
    out[4] = TcShape<256, 0>::BYTES; out[5] = TcShape<256, 1>::BYTES;
    out[6] = Tq8Shape<64>::BYTES; out[7] = Tq8Shape<128>::BYTES; out[8] = Tq8Shape<256>::BYTES;
}

// Flash-decoding, phase 2: merge the splits of each query head. Grid H, 256 threads; D up
// to 512 (MLA's latent rank). The split statistics go through shared memory; warp w sums
// splits w, w + 8, ... of each column (coalesced 128-byte rows, loads independent of each
// other), and the 8 warps' sums meet in shared memory. An empty split's weight is 0 and its
// partial output is never written: it is read but selected away (0 * NaN would poison).
extern "C" __global__ void attn_combine(const float* __restrict__ part_o,
                                        const float* __restrict__ part_ml, float* __restrict__ out,
                                        int D, int nsplit) {
    __shared__ float c[1024];
    __shared__ float red[32];
    __shared__ float redm[32];
    __shared__ float acc[8][512];
    PDL_WAIT();
    const int hq = blockIdx.x, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const float* ml = part_ml + (long long)hq * nsplit * 2;
    float mx = -INFINITY;
    for (int s = threadIdx.x; s < nsplit; s += blockDim.x) mx = fmaxf(mx, ml[2 * s]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
    if (lane == 0) redm[warp] = mx;
    __syncthreads();
    float M = -INFINITY;
    for (int i = 0; i < (int)(blockDim.x >> 5); i++) M = fmaxf(M, redm[i]);
    float part = 0.f;
    for (int s = threadIdx.x; s < nsplit; s += blockDim.x) {
        const float mm = ml[2 * s];
        const float w = mm == -INFINITY ? 0.f : __expf(mm - M);
        c[s] = w;
        if (w != 0.f) part += w * ml[2 * s + 1];
    }
    const float inv = 1.f / block_sum(part, red);  // block_sum syncs, so c[] is complete after it
    const float* po = part_o + (long long)hq * nsplit * D;
    for (int d = lane; d < D; d += 32) {
        float o = 0.f;
#pragma unroll 4
        for (int s = warp; s < nsplit; s += 8) {
            const float v = po[(long long)s * D + d], w = c[s];
            o += w != 0.f ? v * w : 0.f;
        }
        acc[warp][d] = o;
    }
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float o = 0.f;
#pragma unroll
        for (int w = 0; w < 8; w++) o += acc[w][d];
        out[(long long)hq * D + d] = o * inv;
    }
}

// Busy-waits ~cycles on one thread: queues the launches after it so that CUDA events between
// them time the kernels alone, without host launch gaps (GraphDecoder.profile).
extern "C" __global__ void spin(long long cycles) {
    long long t0 = clock64();
    while (clock64() - t0 < cycles) {}
}

// Prefill attention helpers (the two products run as cuBLAS batched GEMMs, one batch per KV
// head; scores are chunk x context, never T x T for the whole prompt).
// q (T, KVH*G, D) fp32 -> q16 (KVH, T*G, D) fp16, scaled.
extern "C" __global__ void q_pack(const float* __restrict__ q, __half* __restrict__ q16, int T,
                                  int KVH, int G, int D, float scale) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * KVH * G * D) return;
    int d = i % D, j = (i / D) % G, h = (i / ((long long)D * G)) % KVH;
    long long t = i / ((long long)D * G * KVH);
    q16[(((long long)h * T + t) * G + j) * D + d] = __float2half(q[i] * scale);
}

// Pool positions [0, n) of one layer -> K16, V16 (KVH, n, D) contiguous fp16.
extern "C" __global__ void kv_gather(const __half* __restrict__ pool, const int* table, int layer,
                                     int L, int BS, int KVH, int D, int n, __half* __restrict__ k16,
                                     __half* __restrict__ v16) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * KVH * D) return;
    int d = i % D, h = (i / D) % KVH, p = i / ((long long)D * KVH);
    long long o = ((long long)h * n + p) * D + d;
    k16[o] = pool[kv_index(table, p, layer, 0, h, L, BS, KVH, D) + d];
    v16[o] = pool[kv_index(table, p, layer, 1, h, L, BS, KVH, D) + d];
}

// kv_gather from a q8_0 pool: values dequantized to fp16 (q * d rounded once).
__device__ __forceinline__ __half q8_value(const unsigned char* row, int d) {
    const unsigned char* blk = row + (d / 32) * Q8B;
    return __float2half((float)(signed char)blk[2 + d % 32] * __half2float(*(const __half*)blk));
}
extern "C" __global__ void kv_gather_q8(const unsigned char* __restrict__ pool, const int* table,
                                        int layer, int L, int BS, int KVH, int D, int n,
                                        __half* __restrict__ k16, __half* __restrict__ v16) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)n * KVH * D) return;
    int d = i % D, h = (i / D) % KVH, p = i / ((long long)D * KVH);
    const int RW = D / 32 * Q8B;
    long long o = ((long long)h * n + p) * D + d;
    k16[o] = q8_value(pool + kv_index(table, p, layer, 0, h, L, BS, KVH, RW), d);
    v16[o] = q8_value(pool + kv_index(table, p, layer, 1, h, L, BS, KVH, RW), d);
}

// Causal softmax of score rows (KVH, T*G, n) fp32 -> P fp16. Row (t, j) sees keys [0, pos0+t].
extern "C" __global__ void softmax_causal(const float* __restrict__ s, __half* __restrict__ p,
                                          int TG, int G, int n, int pos0) {
    __shared__ float red[32];
    long long row = blockIdx.x;
    int t = (row % TG) / G;
    int valid = min(n, pos0 + t + 1);
    const float* sr = s + row * n;
    __half* pr = p + row * n;
    float mx = -INFINITY;
    for (int i = threadIdx.x; i < valid; i += blockDim.x) mx = fmaxf(mx, sr[i]);
    for (int o = 16; o; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffff, mx, o));
    __shared__ float redm[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) redm[warp] = mx;
    __syncthreads();
    mx = -INFINITY;
    for (int i = 0; i < nw; i++) mx = fmaxf(mx, redm[i]);
    float sum = 0.f;
    for (int i = threadIdx.x; i < valid; i += blockDim.x) sum += __expf(sr[i] - mx);
    float inv = 1.f / block_sum(sum, red);
    for (int i = threadIdx.x; i < n; i += blockDim.x)
        pr[i] = __float2half(i < valid ? __expf(sr[i] - mx) * inv : 0.f);
}

// O (KVH, T*G, D) fp32 -> out (T, KVH*G*D).
extern "C" __global__ void o_unpack(const float* __restrict__ o, float* __restrict__ out, int T,
                                    int KVH, int G, int D) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T * KVH * G * D) return;
    int d = i % D, j = (i / D) % G, h = (i / ((long long)D * G)) % KVH;
    long long t = i / ((long long)D * G * KVH);
    out[i] = o[(((long long)h * T + t) * G + j) * D + d];
}

// silu(gate) * up for gate_up (T, 2F) -> (T, F).
// out[t, f] = silu(gu[t, f]) * gu[t, F + f]; swiglu_f16 writes fp16: the prefill down-projection
// GEMM's operand, which would otherwise be written as fp32 and then cast (two passes over the
// widest activation of the layer).
template <typename T>
__device__ __forceinline__ void swiglu_body(const float* __restrict__ gu, T* __restrict__ out, int T_, int F) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (long long)T_ * F) return;
    long long t = i / F, f = i % F;
    float g = gu[t * 2 * F + f], u = gu[t * 2 * F + F + f];
    out[i] = (T)(g / (1.f + __expf(-g)) * u);
}
extern "C" __global__ void swiglu(const float* __restrict__ gu, float* __restrict__ out, int T, int F) {
    swiglu_body<float>(gu, out, T, F);
}
extern "C" __global__ void swiglu_f16(const float* __restrict__ gu, __half* __restrict__ out, int T, int F) {
    swiglu_body<__half>(gu, out, T, F);
}

__device__ __forceinline__ unsigned hash3(unsigned a, unsigned b, unsigned c) {
    unsigned h = a * 0x9E3779B1u ^ (b + 0x7F4A7C15u) * 0x85EBCA77u ^ (c + 0x165667B1u) * 0xC2B2AE3Du;
    h ^= h >> 15; h *= 0x2C1B3C6Du; h ^= h >> 12; h *= 0x297A2D39u; h ^= h >> 15;
    return h;
}

// Next token on the device, one block of 1024 threads. inv_temp == 0: argmax (lowest index on
// ties, as numpy). Else a sample from softmax(logits * inv_temp) by the Gumbel-max trick with
// a counter-based hash of (seed, position, index). state = [pos, token]: writes token; if
// advance, also history[pos + 1] = token and pos += 1 (the graph's feedback for the next step).
extern "C" __global__ void next_token(const float* __restrict__ logits, int V, float inv_temp,
                                      unsigned seed, int* state, int* history, int advance) {
    __shared__ float bv[32];
    __shared__ int bi[32];
    int pos = state[0];
    float best = -INFINITY;
    int idx = 0x7fffffff;
    for (int i = threadIdx.x; i < V; i += blockDim.x) {
        float v = logits[i];
        if (inv_temp > 0.f) {
            float u = (hash3(seed, (unsigned)pos, (unsigned)i) >> 8) * (1.f / 16777216.f) + 0.5f / 16777216.f;
            v = v * inv_temp - __logf(-__logf(u));
        }
        if (v > best || (v == best && i < idx)) { best = v; idx = i; }
    }
    for (int o = 16; o; o >>= 1) {
        float ov = __shfl_xor_sync(0xffffffff, best, o);
        int oi = __shfl_xor_sync(0xffffffff, idx, o);
        if (ov > best || (ov == best && oi < idx)) { best = ov; idx = oi; }
    }
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    if (lane == 0) { bv[warp] = best; bi[warp] = idx; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x >> 5); w++)
            if (bv[w] > best || (bv[w] == best && bi[w] < idx)) { best = bv[w]; idx = bi[w]; }
        state[1] = idx;
        if (advance) { history[pos + 1] = idx; state[0] = pos + 1; }
    }
}
