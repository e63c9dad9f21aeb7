// Fused multi-head self-attention over packed variable-length sequences (no padding work).
//
// qkv  [T, 3*H] 16-bit: for token t, Q at columns [h*D, h*D+D), K at H + h*D, V at 2H + h*D.
// out  [T, H]   16-bit: softmax(Q K^T * scale) V per head, keys limited to the query's own sequence.
// cu_seqlens [B+1] int: sequence b owns tokens [cu_seqlens[b], cu_seqlens[b+1]).
// tiles [2*ntiles] int: (sequence, first query row) of every 64-row query tile, built on the host
//                       so that no block is launched for padding.
// Host-checked: D in {32, 64}, H == heads * D, H % 8 == 0, every sequence non-empty, out does not
// alias qkv.
//
// attn_tc_*: one block of 4 warps per (query tile, head); each warp owns 16 query rows. Key/value
// tiles of 64 rows are staged in swizzled shared memory; S = Q K^T and O += P V run on mma.sync with
// an online (running max / running sum) softmax in f32, so the score matrix never leaves registers.
// attn_simple_*: one thread per (token, head), f32 throughout, reading global memory directly.

#define ATT_BQ 64
#define ATT_BKV 64
#define ATT_THREADS 128

template <typename E, int D>
__device__ __forceinline__ void attn_tc(const u16* __restrict__ qkv, u16* __restrict__ out,
                                        const int* __restrict__ cu_seqlens, const int* __restrict__ tiles,
                                        int H, float scale_log2) {
    constexpr int CH = D / 8;       // 16-byte chunks per row: 4 (D=32) or 8 (D=64)
    constexpr int KS = D / 16;      // k16 steps over the head dimension
    constexpr int NT_O = D / 8;     // n8 tiles of the output
    __shared__ __align__(128) u16 sQ[ATT_BQ * D];
    __shared__ __align__(128) u16 sK[ATT_BKV * D];
    __shared__ __align__(128) u16 sV[ATT_BKV * D];

    const int tid = threadIdx.x;
    const int lane = tid % WARP;
    const int warp = tid / WARP;
    const int g = lane / 4;
    const int t = lane % 4;
    const int head = blockIdx.y;
    const int seq = tiles[2 * blockIdx.x];
    const int q0 = tiles[2 * blockIdx.x + 1];
    const int s_begin = cu_seqlens[seq];
    const int s_end = cu_seqlens[seq + 1];
    const size_t ld = (size_t)3 * H;

    // Stage the 64 x D query tile (rows past the sequence end are zero-filled).
    for (int c = tid; c < ATT_BQ * CH; c += ATT_THREADS) {
        const int r = c / CH, ch = c % CH;
        const int tok = q0 + r;
        const bool p = tok < s_end;
        const u16* src = p ? qkv + (size_t)tok * ld + head * D + ch * 8 : qkv;
        cp_async16(smem_u32(&sQ[tile_off<CH>(r, ch)]), src, p);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();

    u32 qf[KS][4];
#pragma unroll
    for (int ks = 0; ks < KS; ks++) {
        const int r = warp * 16 + (lane % 16);
        const int ch = ks * 2 + lane / 16;
        ldsm_x4(qf[ks], smem_u32(&sQ[tile_off<CH>(r, ch)]));
    }

    float o[NT_O][4];
#pragma unroll
    for (int i = 0; i < NT_O; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) o[i][j] = 0.f;
    float m_run[2] = {-BW_INF, -BW_INF};
    float l_run[2] = {0.f, 0.f};

    for (int k0 = s_begin; k0 < s_end; k0 += ATT_BKV) {
        __syncthreads(); // every warp is done with the previous K/V tile
        for (int c = tid; c < ATT_BKV * CH; c += ATT_THREADS) {
            const int r = c / CH, ch = c % CH;
            const int tok = k0 + r;
            const bool p = tok < s_end;
            const u16* base = p ? qkv + (size_t)tok * ld + head * D + ch * 8 : qkv;
            cp_async16(smem_u32(&sK[tile_off<CH>(r, ch)]), p ? base + H : qkv, p);
            cp_async16(smem_u32(&sV[tile_off<CH>(r, ch)]), p ? base + 2 * H : qkv, p);
        }
        cp_async_commit();
        cp_async_wait<0>();
        __syncthreads();

        // S = Q K^T for this warp's 16 rows x 64 keys.
        float s[8][4];
#pragma unroll
        for (int i = 0; i < 8; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) s[i][j] = 0.f;
#pragma unroll
        for (int ks = 0; ks < KS; ks++) {
#pragma unroll
            for (int np = 0; np < 4; np++) {
                u32 b[4];
                const int r = np * 16 + (lane % 8) + (lane / 16) * 8;
                const int ch = ks * 2 + (lane / 8) % 2;
                ldsm_x4(b, smem_u32(&sK[tile_off<CH>(r, ch)]));
                mma16816<E>(s[2 * np], qf[ks], b[0], b[1]);
                mma16816<E>(s[2 * np + 1], qf[ks], b[2], b[3]);
            }
        }

        // Scale into the log2 domain, mask keys past the sequence, online softmax per row.
        float mx[2] = {-BW_INF, -BW_INF};
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int key = k0 + nt * 8 + t * 2 + (j & 1);
                s[nt][j] = key < s_end ? s[nt][j] * scale_log2 : -BW_INF;
                mx[j / 2] = fmaxf(mx[j / 2], s[nt][j]);
            }
        float corr[2];
#pragma unroll
        for (int h = 0; h < 2; h++) {
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL_MASK, mx[h], 1));
            mx[h] = fmaxf(mx[h], __shfl_xor_sync(FULL_MASK, mx[h], 2));
            // The first key of every tile is inside the sequence, so mx is finite here.
            const float m_new = fmaxf(m_run[h], mx[h]);
            corr[h] = exp2f(m_run[h] - m_new);
            m_run[h] = m_new;
            l_run[h] *= corr[h];
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                s[nt][j] = exp2f(s[nt][j] - m_run[j / 2]);
                l_run[j / 2] += s[nt][j];
            }
#pragma unroll
        for (int i = 0; i < NT_O; i++)
#pragma unroll
            for (int j = 0; j < 4; j++) o[i][j] *= corr[j / 2];

        // O += P V: the S accumulators are repacked as 16-bit A fragments (keys 16kk..16kk+15).
#pragma unroll
        for (int kk = 0; kk < 4; kk++) {
            u32 a[4];
            a[0] = pack2<E>(s[2 * kk][0], s[2 * kk][1]);
            a[1] = pack2<E>(s[2 * kk][2], s[2 * kk][3]);
            a[2] = pack2<E>(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            a[3] = pack2<E>(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++) {
                u32 b[4];
                const int r = kk * 16 + (lane % 8) + ((lane / 8) % 2) * 8;
                const int ch = dp * 2 + lane / 16;
                ldsm_x4_trans(b, smem_u32(&sV[tile_off<CH>(r, ch)]));
                mma16816<E>(o[2 * dp], a, b[0], b[1]);
                mma16816<E>(o[2 * dp + 1], a, b[2], b[3]);
            }
        }
    }

#pragma unroll
    for (int h = 0; h < 2; h++) {
        l_run[h] += __shfl_xor_sync(FULL_MASK, l_run[h], 1);
        l_run[h] += __shfl_xor_sync(FULL_MASK, l_run[h], 2);
    }
#pragma unroll
    for (int h = 0; h < 2; h++) {
        const int tok = q0 + warp * 16 + g + h * 8;
        if (tok < s_end) {
            const float inv = 1.f / l_run[h];
#pragma unroll
            for (int i = 0; i < NT_O; i++) {
                const int col = head * D + i * 8 + t * 2;
                *reinterpret_cast<u32*>(out + (size_t)tok * H + col) =
                    pack2<E>(o[i][h * 2] * inv, o[i][h * 2 + 1] * inv);
            }
        }
    }
}

// grid = (ceil(T / 128), heads), block = 128. The token's sequence is found by binary search.
template <typename E, int D>
__device__ __forceinline__ void attn_simple(const u16* __restrict__ qkv, u16* __restrict__ out,
                                            const int* __restrict__ cu_seqlens, int B, int T, int H,
                                            float scale_log2) {
    const int tok = blockIdx.x * blockDim.x + threadIdx.x;
    const int head = blockIdx.y;
    if (tok >= T) return;
    int lo = 0, hi = B; // find b with cu[b] <= tok < cu[b+1]
    while (hi - lo > 1) {
        const int mid = (lo + hi) / 2;
        if (cu_seqlens[mid] <= tok) lo = mid; else hi = mid;
    }
    const int s_begin = cu_seqlens[lo], s_end = cu_seqlens[lo + 1];
    const size_t ld = (size_t)3 * H;
    float q[D], acc[D];
#pragma unroll
    for (int d = 0; d < D; d++) {
        q[d] = to_f32<E>(qkv[(size_t)tok * ld + head * D + d]);
        acc[d] = 0.f;
    }
    float m = -BW_INF, l = 0.f;
    for (int k = s_begin; k < s_end; k++) {
        const u16* kr = qkv + (size_t)k * ld + H + head * D;
        float sc = 0.f;
#pragma unroll
        for (int d = 0; d < D; d++) sc = fmaf(q[d], to_f32<E>(kr[d]), sc);
        sc *= scale_log2;
        const float m_new = fmaxf(m, sc);
        const float corr = exp2f(m - m_new);
        const float p = exp2f(sc - m_new);
        l = l * corr + p;
        const u16* vr = kr + H;
#pragma unroll
        for (int d = 0; d < D; d++) acc[d] = acc[d] * corr + p * to_f32<E>(vr[d]);
        m = m_new;
    }
    const float inv = 1.f / l;
#pragma unroll
    for (int d = 0; d < D; d++) out[(size_t)tok * H + head * D + d] = from_f32<E>(acc[d] * inv);
}

#define ATT_ENTRY(NAME, E, D)                                                                         \
    extern "C" __global__ void __launch_bounds__(ATT_THREADS)                                         \
        attn_tc_##NAME(const u16* qkv, u16* out, const int* cu, const int* tiles, int H, float sl2) {  \
        attn_tc<E, D>(qkv, out, cu, tiles, H, sl2);                                                   \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(128)                                                 \
        attn_simple_##NAME(const u16* qkv, u16* out, const int* cu, int B, int T, int H, float sl2) { \
        attn_simple<E, D>(qkv, out, cu, B, T, H, sl2);                                                \
    }

ATT_ENTRY(d32_bf16, Bf16, 32)
ATT_ENTRY(d32_f16, F16, 32)
ATT_ENTRY(d64_bf16, Bf16, 64)
ATT_ENTRY(d64_f16, F16, 64)
