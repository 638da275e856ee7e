// Decode GEMV on int8 activations: integer dot products (dp4a) over GGUF blocks in place.
//
// quant_x turns an activation row (optionally RMS-normalised first, as the fp32 gemv fuses)
// into int8 per group of 32 with (d, sum): x[i] ~= d * xq[i], sum = d * sum(xq) (the min or
// offset terms of Q4_K, Q5_K, Q4_0 and Q4_1 use it). The sum is of the quantized values, so a
// row's result is exactly its dequantized weights times the dequantized activations: the
// error is sum_i w_i e_i over centred weights, not the larger sum_i q_i e_i over raw ones. gemv_q8 then reads each
// weight block once: one "unit" of a row (64 weights of a K-quant super-block, or one 32-weight
// block) per lane and step, loaded as whole 16-byte words where the format's alignment allows
// (Q4_K, Q5_K), else as aligned 32-bit words realigned with a funnel shift (Q6_K, Q8_0, Q4_0
// blocks start at even addresses only). Two rows per warp share the activation loads; two
// steps are loaded before either is multiplied, so each lane keeps 4 units of weights in
// flight. Integer sums are exact; the float result differs from the fp32 gemv only by the
// activation rounding (|err| <= d/2 per element, as llama.cpp's Q8_1 activations).
//
// Built on quant.cu (h2f, ld16, the type ids); CUDA only.

struct QX {  // one activation row, quantized
    const int8_t* __restrict__ q;
    const float2* __restrict__ s;  // (d, sum) per 32
};

// N 32-bit words starting at a 2-byte-aligned address, from aligned loads. The word past the
// span is read only when the span is misaligned (it then holds the span's last two bytes).
template <int N>
__device__ __forceinline__ void ld_words_a2(const uint8_t* p, uint32_t* out) {
    const uint32_t* a = (const uint32_t*)((unsigned long long)p & ~3ull);
    const uint32_t sh = ((unsigned long long)p & 2ull) * 8u;
    uint32_t w[N + 1];
#pragma unroll
    for (int i = 0; i < N; i++) w[i] = a[i];
    w[N] = sh ? a[N] : 0u;
#pragma unroll
    for (int i = 0; i < N; i++) out[i] = __funnelshift_r(w[i], w[i + 1], sh);
}

__device__ __forceinline__ int dot8(const uint32_t* w, int4 xa, int4 xb, int acc) {
    acc = __dp4a((int)w[0], xa.x, acc); acc = __dp4a((int)w[1], xa.y, acc);
    acc = __dp4a((int)w[2], xa.z, acc); acc = __dp4a((int)w[3], xa.w, acc);
    acc = __dp4a((int)w[4], xb.x, acc); acc = __dp4a((int)w[5], xb.y, acc);
    acc = __dp4a((int)w[6], xb.z, acc); acc = __dp4a((int)w[7], xb.w, acc);
    return acc;
}

__device__ __forceinline__ int dot4(const uint32_t* w, int4 x, int acc) {
    acc = __dp4a((int)w[0], x.x, acc); acc = __dp4a((int)w[1], x.y, acc);
    acc = __dp4a((int)w[2], x.z, acc); acc = __dp4a((int)w[3], x.w, acc);
    return acc;
}

// Scale and min of sub-block j of a Q4_K/Q5_K super-block, from its 12 scale bytes held as
// the words s1, s2, s3 (what scale_min_k4 reads byte by byte).
__device__ __forceinline__ void k4_scale(int j, uint32_t s1, uint32_t s2, uint32_t s3, float* sc,
                                         float* m) {
    const int sh = 8 * (j & 3);
    const int A = (s1 >> sh) & 255, B = (s2 >> sh) & 255, C = (s3 >> sh) & 255;
    if (j < 4) {
        *sc = (float)(A & 63);
        *m = (float)(B & 63);
    } else {
        *sc = (float)((C & 15) | ((A >> 6) << 4));
        *m = (float)((C >> 4) | ((B >> 6) << 4));
    }
}

template <int QT> struct U8;  // one unit of a row: load() its bytes, dot() them with x

template <> struct U8<Q4_K> {  // 64 weights: sub-blocks 2*j2 (low nibbles) and 2*j2+1 (high)
    static constexpr int W = 64;
    uint4 h, q0, q1;
    __device__ __forceinline__ void load(const uint8_t* __restrict__ row, int u) {
        const uint8_t* b = row + 144 * (u >> 2);
        const int j2 = u & 3;
        h = *(const uint4*)b;
        q0 = *(const uint4*)(b + 16 + 32 * j2);
        q1 = *(const uint4*)(b + 32 + 32 * j2);
    }
    __device__ __forceinline__ float dot(int u, QX x) const {
        const int j2 = u & 3;
        const int4* xp = (const int4*)(x.q + 64 * u);
        const float2 s0 = x.s[2 * u], s1 = x.s[2 * u + 1];
        const uint32_t qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
        uint32_t lo[8], hi[8];
#pragma unroll
        for (int i = 0; i < 8; i++) { lo[i] = qw[i] & 0x0F0F0F0Fu; hi[i] = (qw[i] >> 4) & 0x0F0F0F0Fu; }
        const int dl = dot8(lo, xp[0], xp[1], 0), dh = dot8(hi, xp[2], xp[3], 0);
        float sc0, m0, sc1, m1;
        k4_scale(2 * j2, h.y, h.z, h.w, &sc0, &m0);
        k4_scale(2 * j2 + 1, h.y, h.z, h.w, &sc1, &m1);
        const float d = h2f(h.x & 0xFFFF), dmin = h2f(h.x >> 16);
        return d * (sc0 * s0.x * (float)dl + sc1 * s1.x * (float)dh) - dmin * (m0 * s0.y + m1 * s1.y);
    }
};

template <> struct U8<Q5_K> {  // as Q4_K, plus bit 2*j2 / 2*j2+1 of each qh byte as bit 4
    static constexpr int W = 64;
    uint4 h, qa, qb, q0, q1;
    __device__ __forceinline__ void load(const uint8_t* __restrict__ row, int u) {
        const uint8_t* b = row + 176 * (u >> 2);
        const int j2 = u & 3;
        h = *(const uint4*)b;
        qa = *(const uint4*)(b + 16);
        qb = *(const uint4*)(b + 32);
        q0 = *(const uint4*)(b + 48 + 32 * j2);
        q1 = *(const uint4*)(b + 64 + 32 * j2);
    }
    __device__ __forceinline__ float dot(int u, QX x) const {
        const int j2 = u & 3;
        const int4* xp = (const int4*)(x.q + 64 * u);
        const float2 s0 = x.s[2 * u], s1 = x.s[2 * u + 1];
        const uint32_t qw[8] = {q0.x, q0.y, q0.z, q0.w, q1.x, q1.y, q1.z, q1.w};
        const uint32_t hw[8] = {qa.x, qa.y, qa.z, qa.w, qb.x, qb.y, qb.z, qb.w};
        uint32_t lo[8], hi[8];
#pragma unroll
        for (int i = 0; i < 8; i++) {
            lo[i] = (qw[i] & 0x0F0F0F0Fu) | (((hw[i] >> (2 * j2)) & 0x01010101u) << 4);
            hi[i] = ((qw[i] >> 4) & 0x0F0F0F0Fu) | (((hw[i] >> (2 * j2 + 1)) & 0x01010101u) << 4);
        }
        const int dl = dot8(lo, xp[0], xp[1], 0), dh = dot8(hi, xp[2], xp[3], 0);
        float sc0, m0, sc1, m1;
        k4_scale(2 * j2, h.y, h.z, h.w, &sc0, &m0);
        k4_scale(2 * j2 + 1, h.y, h.z, h.w, &sc1, &m1);
        const float d = h2f(h.x & 0xFFFF), dmin = h2f(h.x >> 16);
        return d * (sc0 * s0.x * (float)dl + sc1 * s1.x * (float)dh) - dmin * (m0 * s0.y + m1 * s1.y);
    }
};

// Q6_K: unit u = (super-block u/4, half n, l0 = 0 or 16): positions l0..l0+15 of the four
// 32-groups 4n..4n+3, whose bytes are ql[64n + l0 ..], ql[64n + 32 + l0 ..], qh[32n + l0 ..]:
// 48 bytes, each read by one lane only. Blocks are 210 bytes, so 2-byte aligned.
template <> struct U8<Q6_K> {
    static constexpr int W = 64;
    uint32_t l1[4], l2[4], qh[4], sc[2];
    uint16_t d;
    __device__ __forceinline__ void load(const uint8_t* __restrict__ row, int u) {
        const uint8_t* b = row + 210 * (u >> 2);
        const int n = (u >> 1) & 1, l0 = (u & 1) * 16;
        ld_words_a2<4>(b + 64 * n + l0, l1);
        ld_words_a2<4>(b + 64 * n + 32 + l0, l2);
        ld_words_a2<4>(b + 128 + 32 * n + l0, qh);
        ld_words_a2<2>(b + 192 + 8 * n, sc);
        d = ld16(b + 208);
    }
    __device__ __forceinline__ float dot(int u, QX x) const {
        const int sb = u >> 2, n = (u >> 1) & 1, l0 = (u & 1) * 16;
        const int e0 = 256 * sb + 128 * n + l0;
        float acc = 0.f;
#pragma unroll
        for (int qd = 0; qd < 4; qd++) {
            const uint32_t* ql = (qd & 1) ? l2 : l1;
            const int ls = (qd >> 1) * 4, hs = 2 * qd;
            uint32_t w[4];
#pragma unroll
            for (int i = 0; i < 4; i++)
                w[i] = __vsubss4(((ql[i] >> ls) & 0x0F0F0F0Fu) | (((qh[i] >> hs) & 0x03030303u) << 4),
                                 0x20202020u);
            const int dq = dot4(w, *(const int4*)(x.q + e0 + 32 * qd), 0);
            const int k = 2 * qd + (l0 >> 4);  // scale byte 8n + k of the block
            const float s = (float)(int8_t)((sc[k >> 2] >> (8 * (k & 3))) & 255);
            acc += s * x.s[8 * sb + 4 * n + qd].x * (float)dq;
        }
        return h2f(d) * acc;
    }
};

template <> struct U8<Q8_0> {  // one 34-byte block: d, 32 int8
    static constexpr int W = 32;
    uint32_t q[8];
    uint16_t d;
    __device__ __forceinline__ void load(const uint8_t* __restrict__ row, int u) {
        const uint8_t* b = row + 34 * u;
        d = ld16(b);
        ld_words_a2<8>(b + 2, q);
    }
    __device__ __forceinline__ float dot(int u, QX x) const {
        const int4* xp = (const int4*)(x.q + 32 * u);
        return h2f(d) * x.s[u].x * (float)dot8(q, xp[0], xp[1], 0);
    }
};

template <> struct U8<Q4_0> {  // one 18-byte block: d, 16 bytes (low nibbles 0..15, high 16..31)
    static constexpr int W = 32;
    uint32_t q[4];
    uint16_t d;
    __device__ __forceinline__ void load(const uint8_t* __restrict__ row, int u) {
        const uint8_t* b = row + 18 * u;
        d = ld16(b);
        ld_words_a2<4>(b + 2, q);
    }
    __device__ __forceinline__ float dot(int u, QX x) const {
        const int4* xp = (const int4*)(x.q + 32 * u);
        uint32_t lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) { lo[i] = q[i] & 0x0F0F0F0Fu; hi[i] = (q[i] >> 4) & 0x0F0F0F0Fu; }
        const int dq = dot4(hi, xp[1], dot4(lo, xp[0], 0));
        const float2 s = x.s[u];
        return h2f(d) * (s.x * (float)dq - 8.f * s.y);
    }
};

template <> struct U8<Q4_1> {  // one 20-byte block (4-byte aligned): d, m, 16 bytes
    static constexpr int W = 32;
    uint32_t dm, q[4];
    __device__ __forceinline__ void load(const uint8_t* __restrict__ row, int u) {
        const uint32_t* b = (const uint32_t*)(row + 20 * u);
        dm = b[0];
        q[0] = b[1]; q[1] = b[2]; q[2] = b[3]; q[3] = b[4];
    }
    __device__ __forceinline__ float dot(int u, QX x) const {
        const int4* xp = (const int4*)(x.q + 32 * u);
        uint32_t lo[4], hi[4];
#pragma unroll
        for (int i = 0; i < 4; i++) { lo[i] = q[i] & 0x0F0F0F0Fu; hi[i] = (q[i] >> 4) & 0x0F0F0F0Fu; }
        const int dq = dot4(hi, xp[1], dot4(lo, xp[0], 0));
        const float2 s = x.s[u];
        return h2f(dm & 0xFFFF) * s.x * (float)dq + h2f(dm >> 16) * s.y;
    }
};

// Float4s [c0, c0 + blockDim.x) of one activation row x (cols floats, float4-aligned) -> q
// (int8) and s ((d, sum) per 32), RMS-normalised over the whole row and scaled by norm_w first
// when norm_w is set (every block of the row sums the row's squares itself: 16-56 KB from L2,
// no second launch). Called by every thread of a block (blockDim.x a multiple of 32, <= 512;
// red: 16 floats of shared memory); 8 lanes quantize one group (a float4 each), so the
// width-8 shuffles always run with the whole warp. One float4 a thread: the row is spread
// over cols / (4 blockDim.x) blocks, so no thread walks it (one 512-thread block a row took
// 3 us for the 8B's 14336 columns, a dependent load per step; 0.39 ms of its 2.64 ms token
// went to the four quant_x a layer, bench/experiments/decode_ablation.py, 90446bd). (Called
// by every block of a GEMV instead of a quant_x launch, it made the 8B decode 16% slower on
// the H200, 3e41da4: each block's read of the whole row came before its products.)
__device__ __forceinline__ void quant_slice(const float* __restrict__ x, int cols,
                                            const float* __restrict__ norm_w, float eps,
                                            int8_t* __restrict__ xq, float2* __restrict__ xs,
                                            float* red, int c0) {
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const float4* xv = (const float4*)x;
    const int n4 = cols >> 2;
    float scale = 1.f;
    if (norm_w) {
        float ss[4] = {0.f, 0.f, 0.f, 0.f};
        int i = tid;
        for (; i + 3 * (int)blockDim.x < n4; i += 4 * blockDim.x) {  // four loads in flight
#pragma unroll
            for (int k = 0; k < 4; k++) {
                const float4 v = xv[i + k * blockDim.x];
                ss[k] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
            }
        }
        for (; i < n4; i += blockDim.x) {
            const float4 v = xv[i];
            ss[0] += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
        }
        float t = (ss[0] + ss[1]) + (ss[2] + ss[3]);
        for (int o = 16; o; o >>= 1) t += __shfl_xor_sync(0xffffffff, t, o);
        if (lane == 0) red[warp] = t;
        __syncthreads();
        t = 0.f;
        for (int w = 0; w < (int)(blockDim.x >> 5); w++) t += red[w];
        scale = rsqrtf(t / cols + eps);
    }
    const int c = c0 + tid;
    const bool ok = c < n4;
    float4 v = ok ? xv[c] : make_float4(0.f, 0.f, 0.f, 0.f);
    if (norm_w && ok) {
        const float4 w = ((const float4*)norm_w)[c];
        v.x *= scale * w.x; v.y *= scale * w.y; v.z *= scale * w.z; v.w *= scale * w.w;
    }
    float amax = fmaxf(fmaxf(fabsf(v.x), fabsf(v.y)), fmaxf(fabsf(v.z), fabsf(v.w)));
    for (int o = 4; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o, 8));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    const int q0 = __float2int_rn(v.x * id), q1 = __float2int_rn(v.y * id);
    const int q2 = __float2int_rn(v.z * id), q3 = __float2int_rn(v.w * id);
    int qs = q0 + q1 + q2 + q3;
    for (int o = 4; o; o >>= 1) qs += __shfl_xor_sync(0xffffffff, qs, o, 8);
    if (ok) {
        ((char4*)xq)[c] = make_char4((signed char)q0, (signed char)q1, (signed char)q2, (signed char)q3);
        if ((tid & 7) == 0) xs[c >> 3] = make_float2(d, d * (float)qs);
    }
}

// One group of 32 values, one a lane (the whole warp calls it, v already final): int8 into
// q[lane], (d, sum) into *s, with quant_slice's arithmetic, so the same values give the same
// bytes as a quant_x launch. The kernels that write a GEMV's input call it on their outputs
// (decode attention, gemv_q8_swq), one launch a layer fewer each.
__device__ __forceinline__ void quant_warp32(float v, int8_t* __restrict__ q, float2* __restrict__ s) {
    const int lane = threadIdx.x & 31;
    float amax = fabsf(v);
    for (int o = 16; o; o >>= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffff, amax, o));
    const float d = amax / 127.f, id = amax > 0.f ? 127.f / amax : 0.f;
    const int qi = __float2int_rn(v * id);
    int qs = qi;
    for (int o = 16; o; o >>= 1) qs += __shfl_xor_sync(0xffffffff, qs, o);
    q[lane] = (int8_t)qi;
    if (lane == 0) *s = make_float2(d, d * (float)qs);
}

// x (t rows, x_stride floats apart) -> xq (t rows of cols int8) and xs ((d, sum) per 32).
// With norm_w, x is RMS-normalised and scaled by norm_w first. Grid (t, cols / 1024 rounded
// up), QUANT_X_THREADS threads: block (r, b) quantizes columns [1024 b, 1024 b + 1024) of row r.
#define QUANT_X_THREADS 256
extern "C" __global__ void __launch_bounds__(QUANT_X_THREADS) quant_x(
    const float* __restrict__ x, long long x_stride, int cols, const float* __restrict__ norm_w,
    float eps, int8_t* __restrict__ xq, float2* __restrict__ xs) {
    __shared__ float red[16];
    PDL_WAIT();
    const int t = blockIdx.x;
    quant_slice(x + (long long)t * x_stride, cols, norm_w, eps, xq + (long long)t * cols,
                xs + (long long)t * (cols >> 5), red, blockIdx.y * QUANT_X_THREADS);
}

// Two rows of a warp (w0, w1) in flight: each lane's units u and u + 32 of both, a step of 64
// units a warp, so each lane keeps 4 units of weights loading while it multiplies.
template <int QT>
struct RowPair {
    U8<QT> p0, p1, q0, q1;
    // The step at u (lane's first unit), what of it lies in the row (nothing unless live).
    __device__ __forceinline__ void load(const uint8_t* w0, const uint8_t* w1, int u, int nu, bool live = true) {
        if (live && u + 32 < nu) {
            p0.load(w0, u); q0.load(w1, u); p1.load(w0, u + 32); q1.load(w1, u + 32);
        } else if (live && u < nu) {
            p0.load(w0, u); q0.load(w1, u);
        }
    }
    // The lane's sums of both rows from the step at u (already loaded) to the row's end, the
    // next step loaded before each step's products; u is left past the row.
    __device__ __forceinline__ void sums(const uint8_t* w0, const uint8_t* w1, int& u, int nu, QX x,
                                         float& a0, float& a1) {
        while (u + 32 < nu) {
            a0 += p0.dot(u, x) + p1.dot(u + 32, x);
            a1 += q0.dot(u, x) + q1.dot(u + 32, x);
            u += 64;
            load(w0, w1, u, nu);
        }
        if (u < nu) {
            a0 += p0.dot(u, x);
            a1 += q0.dot(u, x);
        }
    }
    // sums for NT activation rows at once (x0 + i * cols, i < NT, the caller's rows clamped
    // to the ones it has): each loaded step of weights is multiplied with every row, and each
    // row's sums run in sums' order, so a row's result is the one sums gives it alone.
    template <int NT>
    __device__ __forceinline__ void sums_n(const uint8_t* w0, const uint8_t* w1, int& u, int nu,
                                           const QX* x, float* a0, float* a1) {
        while (u + 32 < nu) {
#pragma unroll
            for (int i = 0; i < NT; i++) {
                a0[i] += p0.dot(u, x[i]) + p1.dot(u + 32, x[i]);
                a1[i] += q0.dot(u, x[i]) + q1.dot(u + 32, x[i]);
            }
            u += 64;
            load(w0, w1, u, nu);
        }
        if (u < nu) {
#pragma unroll
            for (int i = 0; i < NT; i++) {
                a0[i] += p0.dot(u, x[i]);
                a1[i] += q0.dot(u, x[i]);
            }
        }
    }
};

// y = W x for t rows of quantized x (blockIdx.y), one warp per 2 rows, 8 warps per block.
// MODE 0: y = Wx (+ bias); 1: y += Wx (residual); 2: y[r] = silu(W[r]x) * W[r + rows]x.
template <int QT, int MODE>
__global__ void __launch_bounds__(256) gemv_q8(
    const uint8_t* __restrict__ W, long long row_bytes, const int8_t* __restrict__ xq,
    const float2* __restrict__ xs, int cols, float* __restrict__ y, int rows,
    long long y_stride, const float* __restrict__ bias) {
    const int t = blockIdx.y;
    const QX x = {xq + (long long)t * cols, xs + (long long)t * (cols >> 5)};
    y += (long long)t * y_stride;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = (blockIdx.x * 8 + warp) * (MODE == 2 ? 1 : 2);
    const int r1 = MODE == 2 ? r0 + rows : (r0 + 1 < rows ? r0 + 1 : r0);
    const uint8_t* w0 = W + (long long)r0 * row_bytes;
    const uint8_t* w1 = W + (long long)r1 * row_bytes;
    const int nu = cols / U8<QT>::W;
    float a0 = 0.f, a1 = 0.f;
    int u = lane;
    // The first step's weights are loaded before PDL_WAIT: no earlier kernel writes them, so
    // under programmatic launch their DRAM latency overlaps the previous kernel's tail.
    RowPair<QT> rp;
    const bool live = r0 < rows;
    rp.load(w0, w1, u, nu, live);
    PDL_WAIT();
    if (!live) return;
    rp.sums(w0, w1, u, nu, x, a0, a1);
    for (int o = 16; o; o >>= 1) {
        a0 += __shfl_xor_sync(0xffffffff, a0, o);
        a1 += __shfl_xor_sync(0xffffffff, a1, o);
    }
    if (lane != 0) return;
    if (MODE == 2) {
        const float g = a0 + (bias ? bias[r0] : 0.f), up = a1 + (bias ? bias[r1] : 0.f);
        y[r0] = g / (1.f + __expf(-g)) * up;
        return;
    }
    const float v0 = a0 + (bias ? bias[r0] : 0.f);
    if (MODE == 1) y[r0] += v0; else y[r0] = v0;
    if (r1 != r0) {
        const float v1 = a1 + (bias ? bias[r1] : 0.f);
        if (MODE == 1) y[r1] += v1; else y[r1] = v1;
    }
}

// gemv_q8 for t rows of x, NT of them a block (grid.y = ceil(t / NT)): each warp loads its
// two weight rows once and multiplies them with each of its block's rows of x, so a batch of
// t <= NT tokens (a prompt-lookup verify, a forced span) reads each weight once, where t
// gemv_q8 rows read it t times (the blocks of one row of x run far apart: nothing stays in
// L2). A block with fewer than NT rows left repeats its last one and writes it once. Each
// row's sums and reduction are gemv_q8's, so each row's y is the one gemv_q8 writes.
template <int QT, int MODE, int NT>
__global__ void __launch_bounds__(256) gemv_q8_n(
    const uint8_t* __restrict__ W, long long row_bytes, const int8_t* __restrict__ xq,
    const float2* __restrict__ xs, int cols, float* __restrict__ y, int rows,
    long long y_stride, const float* __restrict__ bias, int t) {
    const int t0 = blockIdx.y * NT;
    const int nt = min(NT, t - t0);
    QX x[NT];
#pragma unroll
    for (int i = 0; i < NT; i++) {
        const int ti = t0 + (i < nt ? i : nt - 1);
        x[i] = {xq + ti * cols, xs + ti * (cols >> 5)};
    }
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int r0 = (blockIdx.x * 8 + warp) * (MODE == 2 ? 1 : 2);
    const int r1 = MODE == 2 ? r0 + rows : (r0 + 1 < rows ? r0 + 1 : r0);
    const uint8_t* w0 = W + (long long)r0 * row_bytes;
    const uint8_t* w1 = W + (long long)r1 * row_bytes;
    const int nu = cols / U8<QT>::W;
    float a0[NT], a1[NT];
#pragma unroll
    for (int i = 0; i < NT; i++) a0[i] = a1[i] = 0.f;
    int u = lane;
    RowPair<QT> rp;
    const bool live = r0 < rows;
    rp.load(w0, w1, u, nu, live);  // before PDL_WAIT, as gemv_q8
    PDL_WAIT();
    if (!live) return;
    rp.template sums_n<NT>(w0, w1, u, nu, x, a0, a1);
#pragma unroll
    for (int i = 0; i < NT; i++) {
        for (int o = 16; o; o >>= 1) {
            a0[i] += __shfl_xor_sync(0xffffffff, a0[i], o);
            a1[i] += __shfl_xor_sync(0xffffffff, a1[i], o);
        }
    }
    if (lane != 0) return;
#pragma unroll
    for (int i = 0; i < NT; i++) {
        if (i >= nt) break;
        float* yi = y + (long long)(t0 + i) * y_stride;
        if (MODE == 2) {
            const float g = a0[i] + (bias ? bias[r0] : 0.f), up = a1[i] + (bias ? bias[r1] : 0.f);
            yi[r0] = g / (1.f + __expf(-g)) * up;
            continue;
        }
        const float v0 = a0[i] + (bias ? bias[r0] : 0.f);
        if (MODE == 1) yi[r0] += v0; else yi[r0] = v0;
        if (r1 != r0) {
            const float v1 = a1[i] + (bias ? bias[r1] : 0.f);
            if (MODE == 1) yi[r1] += v1; else yi[r1] = v1;
        }
    }
}

// y[r] = silu(W[r]x) * W[r + rows]x for 32 rows a block (4 row pairs a warp, one after
// another, each as gemv_q8's MODE 2 sums it), then the block quantizes its 32 outputs into
// (oq, os), row t at t * rows, for the down projection: one group a block, so no block waits
// on another (d164091's form, the last of each 4 blocks of 8 rows quantizing after counters
// and fences, was slower than a quant_x launch). rows a multiple of 32; grid (rows / 32, t).
template <int QT>
__global__ void __launch_bounds__(256) gemv_q8_swq(
    const uint8_t* __restrict__ W, long long row_bytes, const int8_t* __restrict__ xq,
    const float2* __restrict__ xs, int cols, float* __restrict__ y, int rows,
    long long y_stride, const float* __restrict__ bias, int8_t* __restrict__ oq,
    float2* __restrict__ os) {
    __shared__ float outs[32];
    const int t = blockIdx.y;
    const QX x = {xq + (long long)t * cols, xs + (long long)t * (cols >> 5)};
    y += (long long)t * y_stride;
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int nu = cols / U8<QT>::W;
    int r0 = blockIdx.x * 32 + warp * 4;
    const uint8_t* w0 = W + (long long)r0 * row_bytes;
    const uint8_t* w1 = W + (long long)(r0 + rows) * row_bytes;
    RowPair<QT> rp;
    int u = lane;
    rp.load(w0, w1, u, nu);  // the first pair's first step, before PDL_WAIT (weights: no kernel writes them)
    PDL_WAIT();
#pragma unroll 1
    for (int k = 0; k < 4; k++) {
        float a0 = 0.f, a1 = 0.f;
        rp.sums(w0, w1, u, nu, x, a0, a1);
        if (k < 3) {  // the next pair's first step, in flight during this pair's sums
            w0 += row_bytes; w1 += row_bytes; u = lane;
            rp.load(w0, w1, u, nu);
        }
        for (int o = 16; o; o >>= 1) {
            a0 += __shfl_xor_sync(0xffffffff, a0, o);
            a1 += __shfl_xor_sync(0xffffffff, a1, o);
        }
        if (lane == 0) {
            const float g = a0 + (bias ? bias[r0] : 0.f), up = a1 + (bias ? bias[r0 + rows] : 0.f);
            const float v = g / (1.f + __expf(-g)) * up;
            y[r0] = v;
            outs[warp * 4 + k] = v;
        }
        r0++;
    }
    __syncthreads();
    if (warp == 0)
        quant_warp32(outs[lane], oq + (long long)t * rows + blockIdx.x * 32, os + (long long)t * (rows >> 5) + blockIdx.x);
}
