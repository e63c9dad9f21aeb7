// Token + position + type embedding gather fused with LayerNorm.
//
// out[t, :] = LN(word[ids[t]] + pos[pos_ids[t]] + type[type_ids[t]]) * gamma + beta
//
// One warp per token row; a lane holds up to 32 values (hidden <= 1024, checked by the host), so
// the row is read from the tables once and normalised from registers (two-pass mean/variance).
// An index outside its table (the host validates first; this is the second line) writes a NaN row
// instead of reading out of bounds.

#define EMB_MAXV 32

template <typename E>
__device__ __forceinline__ void embed_ln(const u32* __restrict__ ids, const u32* __restrict__ type_ids,
                                         const u32* __restrict__ pos_ids, const u16* __restrict__ wemb,
                                         const u16* __restrict__ pemb, const u16* __restrict__ temb,
                                         const float* __restrict__ gamma, const float* __restrict__ beta,
                                         u16* __restrict__ out, int T, int H, int V, int P, int TT, float eps) {
    const int lane = threadIdx.x % WARP;
    const int row = blockIdx.x * (blockDim.x / WARP) + threadIdx.x / WARP;
    if (row >= T) return;
    const u32 id = ids[row], tt = type_ids[row], p = pos_ids[row];
    u16* o = out + (size_t)row * H;
    if (id >= (u32)V || tt >= (u32)TT || p >= (u32)P) {
        for (int c = lane; c < H; c += WARP) o[c] = from_f32<E>(__int_as_float(0x7fc00000));
        return;
    }
    const u16* w = wemb + (size_t)id * H;
    const u16* pe = pemb + (size_t)p * H;
    const u16* te = temb + (size_t)tt * H;
    float v[EMB_MAXV];
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < EMB_MAXV; i++) {
        const int c = i * WARP + lane;
        v[i] = 0.f;
        if (c < H) {
            v[i] = to_f32<E>(w[c]) + to_f32<E>(pe[c]) + to_f32<E>(te[c]);
            sum += v[i];
        }
    }
    warp_layernorm_store<E, EMB_MAXV>(v, sum, H, lane, eps, gamma, beta, o);
}

extern "C" __global__ void __launch_bounds__(256)
    embed_ln_bf16(const u32* ids, const u32* type_ids, const u32* pos_ids, const u16* wemb, const u16* pemb,
                  const u16* temb, const float* gamma, const float* beta, u16* out, int T, int H, int V, int P,
                  int TT, float eps) {
    embed_ln<Bf16>(ids, type_ids, pos_ids, wemb, pemb, temb, gamma, beta, out, T, H, V, P, TT, eps);
}

extern "C" __global__ void __launch_bounds__(256)
    embed_ln_f16(const u32* ids, const u32* type_ids, const u32* pos_ids, const u16* wemb, const u16* pemb,
                 const u16* temb, const float* gamma, const float* beta, u16* out, int T, int H, int V, int P,
                 int TT, float eps) {
    embed_ln<F16>(ids, type_ids, pos_ids, wemb, pemb, temb, gamma, beta, out, T, H, V, P, TT, eps);
}
