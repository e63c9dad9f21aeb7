// Bulwark kernels: shared helpers, prepended to every .cu file before NVRTC compiles it.
//
// No #include: these sources compile with NVRTC alone (no CUDA toolkit headers on the build or
// the appliance). 16-bit float conversions and the tensor-core instructions are written as inline
// PTX, which needs sm_80 or later (cvt.rn.bf16, mma.sync m16n8k16 with bf16, ldmatrix, cp.async).
//
// Element storage: every 16-bit activation or weight travels as a raw `u16`. The tag types Bf16 and
// F16 pick the interpretation at compile time; each kernel file ends with `extern "C"` entry points
// `<name>_bf16` and `<name>_f16` that instantiate its template once per format.

typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned long long u64;

struct Bf16 {};
struct F16 {};

#define WARP 32
#define FULL_MASK 0xffffffffu
// +infinity without math.h
#define BW_INF __int_as_float(0x7f800000)

template <typename E> __device__ __forceinline__ float to_f32(u16 v);
template <> __device__ __forceinline__ float to_f32<Bf16>(u16 v) {
    return __uint_as_float(((u32)v) << 16);
}
template <> __device__ __forceinline__ float to_f32<F16>(u16 v) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(v));
    return f;
}

template <typename E> __device__ __forceinline__ u16 from_f32(float f);
template <> __device__ __forceinline__ u16 from_f32<Bf16>(float f) {
    u16 r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}
template <> __device__ __forceinline__ u16 from_f32<F16>(float f) {
    u16 r;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

// Two floats into one 32-bit register: `lo` in bits 0..15 (the lower column index), `hi` in 16..31.
// PTX cvt.*x2 puts its first source operand in the upper half.
template <typename E> __device__ __forceinline__ u32 pack2(float lo, float hi);
template <> __device__ __forceinline__ u32 pack2<Bf16>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <> __device__ __forceinline__ u32 pack2<F16>(float lo, float hi) {
    u32 r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}
template <typename E> __device__ __forceinline__ float lo_f32(u32 v) { return to_f32<E>((u16)(v & 0xffffu)); }
template <typename E> __device__ __forceinline__ float hi_f32(u32 v) { return to_f32<E>((u16)(v >> 16)); }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}
__device__ __forceinline__ u32 warp_sum_u32(u32 v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// Exact (erf) GELU, the activation BERT checkpoints name "gelu".
__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
}

// Generic pointer to a 32-bit shared-memory address, for ldmatrix and cp.async.
__device__ __forceinline__ u32 smem_u32(const void* p) {
    u32 r;
    asm("{ .reg .u64 a; cvta.to.shared.u64 a, %1; cvt.u32.u64 %0, a; }" : "=r"(r) : "l"(p));
    return r;
}

// 16-byte global->shared copy that bypasses L1; when `pred` is false nothing is read and the 16
// shared bytes are zero-filled (src-size 0), so tiles past a matrix edge hold zeros.
__device__ __forceinline__ void cp_async16(u32 dst, const void* src, bool pred) {
    int n = pred ? 16 : 0;
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N> __device__ __forceinline__ void cp_async_wait() {
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
}

// Four 8x8 b16 matrices from shared memory: lanes 8i..8i+7 give the row addresses of matrix i;
// register i receives matrix i in the mma fragment layout.
__device__ __forceinline__ void ldsm_x4(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}
__device__ __forceinline__ void ldsm_x4_trans(u32 (&r)[4], u32 addr) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr)
                 : "memory");
}

// D += A(16x16, row) * B(16x8, col), f32 accumulators. Fragment layout (g = lane/4, t = lane%4):
// a0 = A[g][2t..2t+1], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// b0 = B[2t..2t+1][g], b1 = B[2t+8..][g]; d0,d1 = D[g][2t..2t+1], d2,d3 = D[g+8][2t..2t+1].
template <typename E> __device__ __forceinline__ void mma16816(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1);
template <> __device__ __forceinline__ void mma16816<Bf16>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <> __device__ __forceinline__ void mma16816<F16>(float (&d)[4], const u32 (&a)[4], u32 b0, u32 b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
        "{%0,%1,%2,%3};"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared-memory tile rows of CH 16-byte chunks (CH = 4 for 64-byte rows, 8 for 128-byte rows).
// The chunk index is XOR-swizzled so that the eight row addresses of one ldmatrix phase land in
// eight different 16-byte bank groups (no bank conflicts without padding).
template <int CH> __device__ __forceinline__ int swz(int row, int chunk) {
    return chunk ^ ((row / (8 / CH)) % CH);
}
// Element offset of (row, chunk) in a swizzled tile whose rows hold CH*8 elements.
template <int CH> __device__ __forceinline__ int tile_off(int row, int chunk) {
    return row * (CH * 8) + swz<CH>(row, chunk) * 8;
}

// LayerNorm of one row held by one warp: lane `lane` holds v[i] for column i*WARP+lane (0 past H) and
// `sum` is its partial sum of those values. Two-pass variance in f32; writes gamma/beta-scaled output to `o`.
// Shared by the fused embedding kernel and the plain LayerNorm kernel.
template <typename E, int MAXV>
__device__ __forceinline__ void warp_layernorm_store(const float (&v)[MAXV], float sum, int H, int lane, float eps,
                                                     const float* __restrict__ gamma,
                                                     const float* __restrict__ beta, u16* __restrict__ o) {
    const float mean = warp_sum(sum) / (float)H;
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; i++) {
        const int c = i * WARP + lane;
        if (c < H) {
            const float d = v[i] - mean;
            sq += d * d;
        }
    }
    const float rstd = rsqrtf(warp_sum(sq) / (float)H + eps);
#pragma unroll
    for (int i = 0; i < MAXV; i++) {
        const int c = i * WARP + lane;
        if (c < H) o[c] = from_f32<E>((v[i] - mean) * rstd * gamma[c] + beta[c]);
    }
}
