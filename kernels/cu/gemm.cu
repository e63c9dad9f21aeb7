// GEMM with 16-bit inputs and f32 accumulation on the tensor cores, with a fused epilogue.
//
//   Y[M, N] = epilogue( X[M, K] · W[N, K]^T + bias[N] )
//   epilogue: optional exact GELU (flag 1), then optional residual add R[M, N] (flag 2).
//
// X, W, R, Y are row-major 16-bit (bf16 or f16), bias is f32. W keeps the PyTorch Linear layout
// ([out, in], K contiguous), which is exactly the "col" B operand of mma.sync.row.col.
// Host-checked preconditions: M >= 1, K % 8 == 0 and N % 8 == 0 (16-byte chunks never straddle the
// K edge; output column pairs never straddle the N edge), Y does not alias X, W or R.
//
// gemm_tc_*: block tile 128x128x32, 8 warps as 2 (M) x 4 (N), warp tile 64x32 = 4x4 mma.m16n8k16
// tiles, 3-stage cp.async pipeline (48 KiB static shared memory), swizzled tiles read by ldmatrix.
// Edges: rows past M / N and chunks past K are zero-filled by cp.async, stores are guarded.
// gemm_simple_*: one thread per output, plain f32 FMA loop. Slow; kept as a second GPU
// implementation so a parity failure can be narrowed to the tensor-core path.

#define GEMM_BM 128
#define GEMM_BN 128
#define GEMM_BK 32
#define GEMM_STAGES 3
#define GEMM_THREADS 256
#define GEMM_CH 4 /* 16-byte chunks per 32-element tile row */

#define EPI_GELU 1
#define EPI_RESIDUAL 2

template <typename E>
__device__ __forceinline__ void gemm_store_pair(u16* __restrict__ Y, const u16* __restrict__ R,
                                                const float* __restrict__ bias, int M, int N, int row, int col,
                                                float v0, float v1, int flags) {
    if (row >= M || col >= N) return;
    v0 += bias[col];
    v1 += bias[col + 1];
    if (flags & EPI_GELU) {
        v0 = gelu_erf(v0);
        v1 = gelu_erf(v1);
    }
    const size_t off = (size_t)row * N + col;
    if (flags & EPI_RESIDUAL) {
        const u32 r = *reinterpret_cast<const u32*>(R + off);
        v0 += lo_f32<E>(r);
        v1 += hi_f32<E>(r);
    }
    *reinterpret_cast<u32*>(Y + off) = pack2<E>(v0, v1);
}

template <typename E>
__device__ __forceinline__ void gemm_tc(const u16* __restrict__ X, const u16* __restrict__ W,
                                        const float* __restrict__ bias, const u16* __restrict__ R,
                                        u16* __restrict__ Y, int M, int N, int K, int flags) {
    __shared__ __align__(128) u16 smA[GEMM_STAGES][GEMM_BM * GEMM_BK];
    __shared__ __align__(128) u16 smB[GEMM_STAGES][GEMM_BN * GEMM_BK];

    const int tid = threadIdx.x;
    const int lane = tid % WARP;
    const int warp = tid / WARP;
    const int wm = warp / 4; // 0..1
    const int wn = warp % 4; // 0..3
    const int bm = blockIdx.y * GEMM_BM;
    const int bn = blockIdx.x * GEMM_BN;
    const int ktiles = (K + GEMM_BK - 1) / GEMM_BK;

    // Each thread copies 2 chunks of A and 2 of B per stage (128 rows x 4 chunks = 512 each).
    auto load_stage = [&](int stage, int kt) {
        const int k0 = kt * GEMM_BK;
#pragma unroll
        for (int i = 0; i < 2; i++) {
            const int c = tid + i * GEMM_THREADS;
            const int row = c / GEMM_CH;
            const int ch = c % GEMM_CH;
            const int k = k0 + ch * 8;
            const int ga = bm + row;
            const bool pa = (ga < M) && (k < K);
            const u16* srcA = pa ? X + (size_t)ga * K + k : X;
            cp_async16(smem_u32(&smA[stage][tile_off<GEMM_CH>(row, ch)]), srcA, pa);
            const int gb = bn + row;
            const bool pb = (gb < N) && (k < K);
            const u16* srcB = pb ? W + (size_t)gb * K + k : W;
            cp_async16(smem_u32(&smB[stage][tile_off<GEMM_CH>(row, ch)]), srcB, pb);
        }
    };

    float acc[4][4][4];
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++)
#pragma unroll
            for (int r = 0; r < 4; r++) acc[mi][ni][r] = 0.f;

#pragma unroll
    for (int s = 0; s < GEMM_STAGES - 1; s++) {
        if (s < ktiles) load_stage(s, s);
        cp_async_commit();
    }

    for (int kt = 0; kt < ktiles; kt++) {
        // Tile kt has landed once at most STAGES-2 younger groups are pending; the barrier also
        // tells every warp that the stage refilled below is no longer being read.
        cp_async_wait<GEMM_STAGES - 2>();
        __syncthreads();
        const int nk = kt + GEMM_STAGES - 1;
        if (nk < ktiles) load_stage(nk % GEMM_STAGES, nk);
        cp_async_commit();

        const int s = kt % GEMM_STAGES;
#pragma unroll
        for (int kk = 0; kk < GEMM_BK / 16; kk++) {
            u32 a[4][4];
            u32 b[2][4];
#pragma unroll
            for (int mi = 0; mi < 4; mi++) {
                const int row = wm * 64 + mi * 16 + (lane % 16);
                const int ch = kk * 2 + lane / 16;
                ldsm_x4(a[mi], smem_u32(&smA[s][tile_off<GEMM_CH>(row, ch)]));
            }
#pragma unroll
            for (int p = 0; p < 2; p++) {
                const int row = wn * 32 + p * 16 + (lane % 8) + (lane / 16) * 8;
                const int ch = kk * 2 + (lane / 8) % 2;
                ldsm_x4(b[p], smem_u32(&smB[s][tile_off<GEMM_CH>(row, ch)]));
            }
#pragma unroll
            for (int mi = 0; mi < 4; mi++)
#pragma unroll
                for (int ni = 0; ni < 4; ni++)
                    mma16816<E>(acc[mi][ni], a[mi], b[ni / 2][(ni % 2) * 2], b[ni / 2][(ni % 2) * 2 + 1]);
        }
    }
    cp_async_wait<0>();

    const int g = lane / 4;
    const int t = lane % 4;
#pragma unroll
    for (int mi = 0; mi < 4; mi++)
#pragma unroll
        for (int ni = 0; ni < 4; ni++) {
            const int row = bm + wm * 64 + mi * 16 + g;
            const int col = bn + wn * 32 + ni * 8 + t * 2;
            gemm_store_pair<E>(Y, R, bias, M, N, row, col, acc[mi][ni][0], acc[mi][ni][1], flags);
            gemm_store_pair<E>(Y, R, bias, M, N, row + 8, col, acc[mi][ni][2], acc[mi][ni][3], flags);
        }
}

// One thread per output pair (two adjacent columns), 16x16 threads per block covering 16 rows x
// 32 columns. grid = (ceil(N/32), ceil(M/16)).
template <typename E>
__device__ __forceinline__ void gemm_simple(const u16* __restrict__ X, const u16* __restrict__ W,
                                            const float* __restrict__ bias, const u16* __restrict__ R,
                                            u16* __restrict__ Y, int M, int N, int K, int flags) {
    const int row = blockIdx.y * 16 + threadIdx.y;
    const int col = (blockIdx.x * 16 + threadIdx.x) * 2;
    if (row >= M || col >= N) return;
    const u16* x = X + (size_t)row * K;
    const u16* w0 = W + (size_t)col * K;
    const u16* w1 = w0 + K;
    float a0 = 0.f, a1 = 0.f;
    for (int k = 0; k < K; k++) {
        const float xv = to_f32<E>(x[k]);
        a0 = fmaf(xv, to_f32<E>(w0[k]), a0);
        a1 = fmaf(xv, to_f32<E>(w1[k]), a1);
    }
    gemm_store_pair<E>(Y, R, bias, M, N, row, col, a0, a1, flags);
}

extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_tc_bf16(const u16* X, const u16* W, const float* bias, const u16* R, u16* Y, int M, int N, int K,
                 int flags) {
    gemm_tc<Bf16>(X, W, bias, R, Y, M, N, K, flags);
}
extern "C" __global__ void __launch_bounds__(GEMM_THREADS)
    gemm_tc_f16(const u16* X, const u16* W, const float* bias, const u16* R, u16* Y, int M, int N, int K,
                int flags) {
    gemm_tc<F16>(X, W, bias, R, Y, M, N, K, flags);
}
extern "C" __global__ void __launch_bounds__(256)
    gemm_simple_bf16(const u16* X, const u16* W, const float* bias, const u16* R, u16* Y, int M, int N, int K,
                     int flags) {
    gemm_simple<Bf16>(X, W, bias, R, Y, M, N, K, flags);
}
extern "C" __global__ void __launch_bounds__(256)
    gemm_simple_f16(const u16* X, const u16* W, const float* bias, const u16* R, u16* Y, int M, int N, int K,
                    int flags) {
    gemm_simple<F16>(X, W, bias, R, Y, M, N, K, flags);
}
