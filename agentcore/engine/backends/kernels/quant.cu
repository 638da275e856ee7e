// GGUF weight blocks read in place: decode of 32-element groups, GEMV, dequant to fp16,
// embedding gather.
//
// Every weight type is decoded through one function, deq32<QT>(row, g, out): the 32 floats
// of elements [32g, 32g + 32) of a row stored as GGUF blocks. A K-quant super-block of 256
// holds 8 such groups; Q4_0/Q4_1/Q8_0 blocks are one group; float rows are sliced. The GEMV,
// the fp16 dequantizer (prefill) and the embedding gather are all built on it, so a layout
// is written once. QT is the GGML type id (F32=0, F16=1, Q4_0=2, Q4_1=3, Q8_0=8, Q2_K=10,
// Q4_K=12, Q5_K=13, Q6_K=14, BF16=30).
//
// This file also compiles as plain C++ (no CUDA) so the decoders can be checked against the
// gguf package's dequantizers on a machine without a GPU (tests/test_ops_cuda_decode.py).

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
#include <stdint.h>
#include <string.h>
#include <math.h>
#define __device__
#define __global__
#define __forceinline__ inline
#define __restrict__
#define PDL_WAIT()
#define PDL_PREFETCH_L2(p, n)
static inline float h2f(uint16_t h) {
    uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023, f;
    if (e == 0) {
        if (m == 0) f = s << 31;
        else { e = 113; while (!(m & 1024)) { m <<= 1; e--; } m &= 1023; f = (s << 31) | (e << 23) | (m << 13); }
    } else if (e == 31) f = (s << 31) | 0x7f800000u | (m << 13);
    else f = (s << 31) | ((e + 112) << 23) | (m << 13);
    float r; memcpy(&r, &f, 4); return r;
}
static inline float bf2f(uint16_t h) { uint32_t f = (uint32_t)h << 16; float r; memcpy(&r, &f, 4); return r; }
static inline uint16_t ld16(const uint8_t* p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline uint32_t ld32(const uint8_t* p) { uint32_t v; memcpy(&v, p, 4); return v; }
#else
#include <cuda_fp16.h>
typedef unsigned char uint8_t;
typedef signed char int8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }
__device__ __forceinline__ float bf2f(uint16_t h) { return __uint_as_float(((uint32_t)h) << 16); }
__device__ __forceinline__ uint16_t ld16(const uint8_t* p) { return *(const uint16_t*)p; }
__device__ __forceinline__ uint32_t ld32(const uint8_t* p) { return *(const uint32_t*)p; }
// Programmatic dependent launch (sm_90+; agentcore/engine/backends/launch.py). A kernel of the
// decode graph may be launched while the one before it is finishing: it does what depends on
// no earlier kernel (a GEMV loads its weights), then PDL_WAIT() blocks until every kernel
// before it has completed and its writes are visible, then lets the next kernel launch. Every
// such kernel calls PDL_WAIT() before its first read or write of activations, KV or state.
// Launched without the attribute (eager ops, prefill, older GPUs), both are no-ops.
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
__device__ __forceinline__ void PDL_WAIT() {
    asm volatile("griddepcontrol.wait;" ::: "memory");
    asm volatile("griddepcontrol.launch_dependents;" :::);
}
// Bytes [p, p + n) toward L2 (the 16-byte-aligned span inside them), one bulk request.
__device__ __forceinline__ void PDL_PREFETCH_L2(const void* p, long long n) {
    const unsigned long long a = ((unsigned long long)p + 15ull) & ~15ull;
    const unsigned long long e = ((unsigned long long)p + (unsigned long long)n) & ~15ull;
    if (e > a)
        asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(a), "r"((unsigned)(e - a)) : "memory");
}
#else
__device__ __forceinline__ void PDL_WAIT() {}
__device__ __forceinline__ void PDL_PREFETCH_L2(const void*, long long) {}
#endif
#endif

enum { F32 = 0, F16 = 1, Q4_0 = 2, Q4_1 = 3, Q8_0 = 8, Q2_K = 10, Q4_K = 12, Q5_K = 13,
       Q6_K = 14, BF16 = 30 };

// 6-bit scale and min of sub-block j of a Q4_K/Q5_K super-block (12 packed bytes).
__device__ __forceinline__ void scale_min_k4(int j, const uint8_t* q, int* sc, int* m) {
    if (j < 4) {
        *sc = q[j] & 63;
        *m = q[j + 4] & 63;
    } else {
        *sc = (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4);
        *m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

template <int QT>
__device__ __forceinline__ void deq32(const uint8_t* __restrict__ row, int g, float* out) {
    if (QT == F32) {
        const float* p = (const float*)row + 32 * g;
        for (int i = 0; i < 32; i++) out[i] = p[i];
    } else if (QT == F16) {
        const uint8_t* p = row + 64 * g;
        for (int i = 0; i < 32; i++) out[i] = h2f(ld16(p + 2 * i));
    } else if (QT == BF16) {
        const uint8_t* p = row + 64 * g;
        for (int i = 0; i < 32; i++) out[i] = bf2f(ld16(p + 2 * i));
    } else if (QT == Q4_0) {
        const uint8_t* b = row + 18 * g;
        float d = h2f(ld16(b));
        for (int i = 0; i < 16; i++) {
            int q = b[2 + i];
            out[i] = d * ((q & 15) - 8);
            out[i + 16] = d * ((q >> 4) - 8);
        }
    } else if (QT == Q4_1) {
        const uint8_t* b = row + 20 * g;  // 4-byte aligned
        float d = h2f(ld16(b)), m = h2f(ld16(b + 2));
        for (int w = 0; w < 4; w++) {
            uint32_t q = ld32(b + 4 + 4 * w);
            for (int k = 0; k < 4; k++) {
                uint32_t byte = (q >> (8 * k)) & 255;
                out[4 * w + k] = d * (float)(byte & 15) + m;
                out[4 * w + k + 16] = d * (float)(byte >> 4) + m;
            }
        }
    } else if (QT == Q8_0) {
        const uint8_t* b = row + 34 * g;  // 2-byte aligned
        float d = h2f(ld16(b));
        for (int w = 0; w < 16; w++) {
            uint16_t q = ld16(b + 2 + 2 * w);
            out[2 * w] = d * (float)(int8_t)(q & 255);
            out[2 * w + 1] = d * (float)(int8_t)(q >> 8);
        }
    } else if (QT == Q4_K) {
        const uint8_t* b = row + 144 * (g >> 3);
        int j = g & 7, sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        float d = h2f(ld16(b)) * sc, dm = h2f(ld16(b + 2)) * m;
        const uint8_t* q = b + 16 + 32 * (j >> 1);
        int shift = (j & 1) * 4;
        for (int w = 0; w < 8; w++) {
            uint32_t v = ld32(q + 4 * w);
            for (int k = 0; k < 4; k++) out[4 * w + k] = d * (float)((v >> (8 * k + shift)) & 15) - dm;
        }
    } else if (QT == Q5_K) {
        const uint8_t* b = row + 176 * (g >> 3);
        int j = g & 7, sc, m;
        scale_min_k4(j, b + 4, &sc, &m);
        float d = h2f(ld16(b)) * sc, dm = h2f(ld16(b + 2)) * m;
        const uint8_t* qh = b + 16;
        const uint8_t* q = b + 48 + 32 * (j >> 1);
        int shift = (j & 1) * 4;
        for (int w = 0; w < 8; w++) {
            uint32_t v = ld32(q + 4 * w), h = ld32(qh + 4 * w);
            for (int k = 0; k < 4; k++) {
                int lo = (v >> (8 * k + shift)) & 15;
                int hi = (h >> (8 * k + j)) & 1;
                out[4 * w + k] = d * (float)(lo | (hi << 4)) - dm;
            }
        }
    } else if (QT == Q6_K) {
        const uint8_t* b = row + 210 * (g >> 3);  // 2-byte aligned
        int jj = g & 7, half = jj >> 2, qd = jj & 3;
        float d = h2f(ld16(b + 208));
        const uint8_t* ql = b + 64 * half + ((qd & 1) ? 32 : 0);
        const uint8_t* qh = b + 128 + 32 * half;
        const int8_t* scales = (const int8_t*)(b + 192 + 8 * half + 2 * qd);
        int lshift = (qd >> 1) * 4, hshift = 2 * qd;
        float d0 = d * scales[0], d1 = d * scales[1];
        for (int w = 0; w < 16; w++) {
            uint16_t l2 = ld16(ql + 2 * w), h2 = ld16(qh + 2 * w);
            for (int k = 0; k < 2; k++) {
                int i = 2 * w + k;
                int q = (((l2 >> (8 * k)) & 255) >> lshift & 15) | (((((h2 >> (8 * k)) & 255) >> hshift) & 3) << 4);
                out[i] = (i < 16 ? d0 : d1) * (float)(q - 32);
            }
        }
    } else if (QT == Q2_K) {
        const uint8_t* b = row + 84 * (g >> 3);  // 4-byte aligned
        int jj = g & 7, half = jj >> 2, j = jj & 3;
        float d = h2f(ld16(b + 80)), dmin = h2f(ld16(b + 82));
        const uint8_t* q = b + 16 + 32 * half;
        int s0 = b[8 * half + 2 * j], s1 = b[8 * half + 2 * j + 1];
        float dl0 = d * (s0 & 15), ml0 = dmin * (s0 >> 4);
        float dl1 = d * (s1 & 15), ml1 = dmin * (s1 >> 4);
        for (int w = 0; w < 8; w++) {
            uint32_t v = ld32(q + 4 * w);
            for (int k = 0; k < 4; k++) {
                int i = 4 * w + k;
                float qv = (float)((v >> (8 * k + 2 * j)) & 3);
                out[i] = i < 16 ? dl0 * qv - ml0 : dl1 * qv - ml1;
            }
        }
    }
}

#if !defined(__CUDACC__) && !defined(__CUDACC_RTC__)
// Host entry for the CPU check: dequantize `rows` rows of `cols` elements.
extern "C" int deq_rows_host(int qt, const uint8_t* w, long row_bytes, int rows, int cols, float* out) {
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < cols / 32; g++) {
            const uint8_t* row = w + (long)r * row_bytes;
            float* o = out + (long)r * cols + 32 * g;
            switch (qt) {
                case F32: deq32<F32>(row, g, o); break;
                case F16: deq32<F16>(row, g, o); break;
                case BF16: deq32<BF16>(row, g, o); break;
                case Q4_0: deq32<Q4_0>(row, g, o); break;
                case Q4_1: deq32<Q4_1>(row, g, o); break;
                case Q8_0: deq32<Q8_0>(row, g, o); break;
                case Q2_K: deq32<Q2_K>(row, g, o); break;
                case Q4_K: deq32<Q4_K>(row, g, o); break;
                case Q5_K: deq32<Q5_K>(row, g, o); break;
                case Q6_K: deq32<Q6_K>(row, g, o); break;
                default: return -1;
            }
        }
    return 0;
}
#else

// x in shared memory is padded by 4 floats every 32, so the 32 lanes of a warp, each reading
// its own group's float4s, hit distinct banks.
__device__ __forceinline__ int xpad(int i) { return i + ((i >> 5) << 2); }

// GEMV over the rows of a GGUF matrix, one warp per ROWS rows, 8 warps per block.
// x: one row per blockIdx.y, x_stride floats apart (0: every row reads the same x). If
// norm_w: x is RMS-normalised and scaled by norm_w first (fused RMSNorm). MODE 0: y = Wx
// (+ bias); MODE 1: y += Wx (residual add); MODE 2: SwiGLU, y[r] = silu(W[r]x) * W[r + rows]x
// for r < rows. With eids (MoE), row blockIdx.y uses the matrix of expert eids[blockIdx.y],
// e_stride bytes apart in W, read on the device (the decode graph routes on the device).
template <int QT, int MODE>
__global__ void __launch_bounds__(256) gemv(
    const uint8_t* __restrict__ W, long long row_bytes, const float* __restrict__ x, int cols,
    float* __restrict__ y, int rows, long long y_stride, const float* __restrict__ norm_w,
    float eps, const float* __restrict__ bias, long long x_stride, const int* __restrict__ eids,
    long long e_stride) {
    extern __shared__ float xs[];
    const int t = blockIdx.y;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    if (!eids && t == 0 && tid < 2) {  // this block's rows (MODE 2: gate and up), toward L2
        const int per = MODE == 2 ? 8 : 16, r = blockIdx.x * per;
        const int nr = r < rows ? min(per, rows - r) : 0;
        PDL_PREFETCH_L2(W + (long long)(r + (tid ? rows : 0)) * row_bytes,
                        (MODE == 2 || tid == 0 ? nr : 0) * row_bytes);
    }
    PDL_WAIT();
    x += (long long)t * x_stride;
    y += (long long)t * y_stride;
    if (eids) W += (long long)eids[t] * e_stride;
    float scale = 1.f;
    if (norm_w) {
        __shared__ float red[8];
        float ss = 0.f;
        for (int i = tid; i < cols; i += 256) { float v = x[i]; ss += v * v; }
        for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
        if (lane == 0) red[warp] = ss;
        __syncthreads();
        ss = 0.f;
        for (int i = 0; i < 8; i++) ss += red[i];
        scale = rsqrtf(ss / cols + eps);
    }
    for (int i = tid; i < cols; i += 256) xs[xpad(i)] = norm_w ? x[i] * scale * norm_w[i] : x[i];
    __syncthreads();
    const int ROWS = 2;
    int r0 = (blockIdx.x * 8 + warp) * (MODE == 2 ? 1 : ROWS);
    if (r0 >= rows) return;
    int rr[ROWS];
    rr[0] = r0;
    rr[1] = MODE == 2 ? r0 + rows : (r0 + 1 < rows ? r0 + 1 : r0);
    float acc[ROWS] = {0.f, 0.f};
    const int ngroups = cols >> 5;
    for (int g = lane; g < ngroups; g += 32) {
        const float4* xv = (const float4*)(xs + xpad(32 * g));
        float xr[32];
#pragma unroll
        for (int k = 0; k < 8; k++) {
            float4 v = xv[k];
            xr[4 * k] = v.x; xr[4 * k + 1] = v.y; xr[4 * k + 2] = v.z; xr[4 * k + 3] = v.w;
        }
#pragma unroll
        for (int r = 0; r < ROWS; r++) {
            float w[32];
            deq32<QT>(W + (long long)rr[r] * row_bytes, g, w);
            float s = 0.f;
#pragma unroll
            for (int k = 0; k < 32; k++) s += w[k] * xr[k];
            acc[r] += s;
        }
    }
#pragma unroll
    for (int r = 0; r < ROWS; r++)
        for (int o = 16; o; o >>= 1) acc[r] += __shfl_xor_sync(0xffffffff, acc[r], o);
    if (lane != 0) return;
    if (MODE == 2) {
        float gte = acc[0] + (bias ? bias[rr[0]] : 0.f), up = acc[1] + (bias ? bias[rr[1]] : 0.f);
        y[r0] = gte / (1.f + __expf(-gte)) * up;
        return;
    }
    for (int r = 0; r < ROWS; r++) {
        if (r == 1 && rr[1] == rr[0]) break;
        float v = acc[r] + (bias ? bias[rr[r]] : 0.f);
        if (MODE == 1) y[rr[r]] += v; else y[rr[r]] = v;
    }
}

// Rows [0, rows) of a GGUF matrix to fp16 (out: rows x cols, row-major): the prefill GEMMs'
// operand. One thread a group of 32, 128 threads a block. Group gid's values land at
// out + 32 gid, so a block's 128 groups are one contiguous 8 KB span: each thread packs its
// group into shared memory and the block then stores the span as consecutive 16-byte words
// (each thread writing its own 64 bytes directly is a 64-byte stride across a warp: a quarter
// of every store's sectors, 6-7x under the copy bandwidth on the H200).
template <int QT>
__global__ void __launch_bounds__(128) dequant_f16(const uint8_t* __restrict__ W, long long row_bytes,
                                                   int rows, int cols, __half* __restrict__ out) {
    __shared__ uint4 tile[128 * 4];
    const int ngroups = cols >> 5;
    const long long total = (long long)rows * ngroups, g0 = (long long)blockIdx.x * 128;
    const long long gid = g0 + threadIdx.x;
    if (gid < total) {
        const int r = (int)(gid / ngroups), g = (int)(gid % ngroups);
        float w[32];
        deq32<QT>(W + (long long)r * row_bytes, g, w);
#pragma unroll
        for (int k = 0; k < 4; k++) {
            __half2 h[4];
#pragma unroll
            for (int e = 0; e < 4; e++) h[e] = __floats2half2_rn(w[8 * k + 2 * e], w[8 * k + 2 * e + 1]);
            tile[(threadIdx.x * 4 + k) ^ ((threadIdx.x >> 1) & 3)] = *(const uint4*)h;  // swizzled
        }
    }
    __syncthreads();
    const int words = (int)min(128ll, total - g0) * 4;
    uint4* o = (uint4*)(out + g0 * 32);
    for (int i = threadIdx.x; i < words; i += 128) o[i] = tile[i ^ ((i >> 3) & 3)];
}

// out[i, :] = row ids[i] of the table, as fp32. One block per id; ids are read on the device
// (the decode graph reads its current token from device memory).
template <int QT>
__global__ void embed(const uint8_t* __restrict__ W, long long row_bytes, int cols,
                      const int* __restrict__ ids, float* __restrict__ out) {
    PDL_WAIT();
    const uint8_t* row = W + (long long)ids[blockIdx.x] * row_bytes;
    float* o = out + (long long)blockIdx.x * cols;
    for (int g = threadIdx.x; g < (cols >> 5); g += blockDim.x) {
        float w[32];
        deq32<QT>(row, g, w);
        for (int k = 0; k < 32; k++) o[32 * g + k] = w[k];
    }
}
#endif
