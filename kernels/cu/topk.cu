// Cosine top-k of queries against a stored embedding matrix.
//
// Q [nq, H] f32 and S [n, H] f32 are L2-normalised rows, so cosine similarity is the dot product.
// Ranking: higher score first, then lower stored index (deterministic ties, matching the CPU
// reference). A NaN score (never produced by normalised inputs) ranks as -inf.
//
// topk_partial: grid (nchunks, nq), 256 threads; block (c, q) scores rows [c*CHUNK, c*CHUNK+CHUNK)
//   into shared memory (one warp per stored row) and emits that chunk's best k candidates to
//   cand_s / cand_i [nq, nchunks, k] (empty slots: -inf, index 0xffffffff).
// topk_merge: grid (nq), 256 threads; picks the best k of the nchunks*k candidates of query q into
//   out_s / out_i [nq, k]. It consumes the candidate buffers (taken entries are overwritten).
// Host-checked: 1 <= k <= TOPK_MAXK, H <= TOPK_MAXH, n >= 1.

#define TOPK_CHUNK 512
#define TOPK_THREADS 256
#define TOPK_MAXH 1024
#define TOPK_MAXK 1024
#define TOPK_NONE 0xffffffffu

// (s, i) ranks before (bs, bi)?
__device__ __forceinline__ bool topk_better(float s, u32 i, float bs, u32 bi) {
    return s > bs || (s == bs && i < bi);
}

// Block-wide argbest; every thread passes its candidate (s, i, pos) and all receive the winner.
__device__ __forceinline__ void topk_block_best(float& s, u32& i, u32& pos, float* ws, u32* wi, u32* wp) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float os = __shfl_xor_sync(FULL_MASK, s, o);
        const u32 oi = __shfl_xor_sync(FULL_MASK, i, o);
        const u32 op = __shfl_xor_sync(FULL_MASK, pos, o);
        if (topk_better(os, oi, s, i)) { s = os; i = oi; pos = op; }
    }
    if (lane == 0) { ws[warp] = s; wi[warp] = i; wp[warp] = pos; }
    __syncthreads();
    s = ws[0]; i = wi[0]; pos = wp[0];
    for (int w = 1; w < TOPK_THREADS / WARP; w++)
        if (topk_better(ws[w], wi[w], s, i)) { s = ws[w]; i = wi[w]; pos = wp[w]; }
    __syncthreads(); // ws/wi/wp are reused by the next round
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    topk_partial(const float* __restrict__ Q, const float* __restrict__ S, int n, int H, int k,
                 float* __restrict__ cand_s, u32* __restrict__ cand_i) {
    __shared__ float sc[TOPK_CHUNK];
    __shared__ __align__(16) float q[TOPK_MAXH];
    __shared__ float ws[TOPK_THREADS / WARP];
    __shared__ u32 wi[TOPK_THREADS / WARP], wp[TOPK_THREADS / WARP];
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int qi = blockIdx.y;
    const int c0 = blockIdx.x * TOPK_CHUNK;
    const int cnt = min(TOPK_CHUNK, n - c0);
    for (int c = threadIdx.x; c < H; c += TOPK_THREADS) q[c] = Q[(size_t)qi * H + c];
    __syncthreads();

    for (int v = warp; v < cnt; v += TOPK_THREADS / WARP) {
        const float* row = S + (size_t)(c0 + v) * H;
        float a = 0.f;
        if ((H % 128) == 0) {
            for (int c = lane * 4; c < H; c += 128) {
                const float4 x = *reinterpret_cast<const float4*>(row + c);
                const float4 y = *reinterpret_cast<const float4*>(q + c);
                a = fmaf(x.x, y.x, a);
                a = fmaf(x.y, y.y, a);
                a = fmaf(x.z, y.z, a);
                a = fmaf(x.w, y.w, a);
            }
        } else {
            for (int c = lane; c < H; c += WARP) a = fmaf(row[c], q[c], a);
        }
        a = warp_sum(a);
        if (lane == 0) sc[v] = (a == a) ? a : -BW_INF;
    }
    __syncthreads();

    float* out_s = cand_s + ((size_t)qi * gridDim.x + blockIdx.x) * k;
    u32* out_i = cand_i + ((size_t)qi * gridDim.x + blockIdx.x) * k;
    for (int r = 0; r < k; r++) {
        float s = -BW_INF;
        u32 i = TOPK_NONE, pos = TOPK_NONE;
        for (int v = threadIdx.x; v < cnt; v += TOPK_THREADS) {
            const float x = sc[v];
            // NaN marks an entry already taken in an earlier round.
            if (x == x && topk_better(x, (u32)v, s, i)) { s = x; i = (u32)v; pos = (u32)v; }
        }
        topk_block_best(s, i, pos, ws, wi, wp);
        if (threadIdx.x == 0) {
            out_s[r] = s;
            out_i[r] = (i == TOPK_NONE) ? TOPK_NONE : (u32)c0 + i;
            if (pos != TOPK_NONE) sc[pos] = __int_as_float(0x7fc00000);
        }
        __syncthreads();
    }
}

extern "C" __global__ void __launch_bounds__(TOPK_THREADS)
    topk_merge(float* __restrict__ cand_s, u32* __restrict__ cand_i, int ncand, int k, float* __restrict__ out_s,
               u32* __restrict__ out_i) {
    __shared__ float ws[TOPK_THREADS / WARP];
    __shared__ u32 wi[TOPK_THREADS / WARP], wp[TOPK_THREADS / WARP];
    const int qi = blockIdx.x;
    float* cs = cand_s + (size_t)qi * ncand;
    u32* ci = cand_i + (size_t)qi * ncand;
    for (int r = 0; r < k; r++) {
        float s = -BW_INF;
        u32 i = TOPK_NONE, pos = TOPK_NONE;
        for (int p = threadIdx.x; p < ncand; p += TOPK_THREADS) {
            const float x = cs[p];
            const u32 xi = ci[p];
            if (xi != TOPK_NONE && x == x && topk_better(x, xi, s, i)) { s = x; i = xi; pos = (u32)p; }
        }
        topk_block_best(s, i, pos, ws, wi, wp);
        if (threadIdx.x == 0) {
            out_s[(size_t)qi * k + r] = s;
            out_i[(size_t)qi * k + r] = i;
            if (pos != TOPK_NONE) ci[pos] = TOPK_NONE;
        }
        __syncthreads();
    }
}
