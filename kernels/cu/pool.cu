// Pooling over packed sequences, then L2 normalisation, to f32 sentence embeddings.
//
// x [T, H] 16-bit hidden states, cu_seqlens [B+1], out [B, H] f32.
// mode 0: masked mean — the mean over the sequence's own tokens (the packed layout has no padding,
//         so the attention mask is exactly the token range); mode 1: the first ([CLS]) token.
// Then out[b] = v / max(||v||_2, 1e-12) (the same floor as torch.nn.functional.normalize).
// One block per sequence; each thread owns columns tid, tid + blockDim, ... (H <= POOL_MAXC * blockDim).

#define POOL_MAXC 8
#define POOL_THREADS 128

template <typename E>
__device__ __forceinline__ void pool_l2(const u16* __restrict__ x, const int* __restrict__ cu_seqlens,
                                        float* __restrict__ out, int H, int mode) {
    __shared__ float red[POOL_THREADS / WARP];
    const int b = blockIdx.x;
    const int s0 = cu_seqlens[b], s1 = cu_seqlens[b + 1];
    const int end = mode == 1 ? s0 + 1 : s1;
    float v[POOL_MAXC];
    float sq = 0.f;
#pragma unroll
    for (int i = 0; i < POOL_MAXC; i++) {
        const int c = i * POOL_THREADS + threadIdx.x;
        v[i] = 0.f;
        if (c < H) {
            float a = 0.f;
            for (int t = s0; t < end; t++) a += to_f32<E>(x[(size_t)t * H + c]);
            v[i] = a / (float)(end - s0);
            sq += v[i] * v[i];
        }
    }
    sq = warp_sum(sq);
    if (threadIdx.x % WARP == 0) red[threadIdx.x / WARP] = sq;
    __syncthreads();
    float tot = 0.f;
#pragma unroll
    for (int w = 0; w < POOL_THREADS / WARP; w++) tot += red[w];
    const float inv = 1.f / fmaxf(sqrtf(tot), 1e-12f);
#pragma unroll
    for (int i = 0; i < POOL_MAXC; i++) {
        const int c = i * POOL_THREADS + threadIdx.x;
        if (c < H) out[(size_t)b * H + c] = v[i] * inv;
    }
}

extern "C" __global__ void __launch_bounds__(POOL_THREADS)
    pool_l2_bf16(const u16* x, const int* cu_seqlens, float* out, int H, int mode) {
    pool_l2<Bf16>(x, cu_seqlens, out, H, mode);
}
extern "C" __global__ void __launch_bounds__(POOL_THREADS)
    pool_l2_f16(const u16* x, const int* cu_seqlens, float* out, int H, int mode) {
    pool_l2<F16>(x, cu_seqlens, out, H, mode);
}
