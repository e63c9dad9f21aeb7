// Scrub: zero a device buffer and verify the zeros in the same pass.
//
// p [n16] 16-byte words (allocations are rounded up to 256 bytes, so every buffer is whole words).
// flags: flags[0] (u32) is OR-ed with 1 when any read-back word is non-zero; flags[2..3] (u64,
// byte offset 8) accumulates how many words were written and read back. The host zeroes the
// flags first and, after the kernel, requires flags[0] == 0 and count == n16: a scrub that skipped
// a word, read back stale data or never ran fails the check.
//
// The check rides along with the write: each thread stores its zero words, then reads the same
// words back with ld.global.cg (L2, the device's point of coherence, not the SM's L1). The lines
// were just written, so the reads are L2 hits and DRAM traffic stays that of a plain memset.
// Four independent words per thread per iteration keep enough stores and loads in flight.
// grid-stride loop: any grid size covers the whole buffer.

#define SCRUB_UNROLL 4

__device__ __forceinline__ void st_zero16(uint4* p) {
    asm volatile("st.global.v4.u32 [%0], {%1, %1, %1, %1};" ::"l"(p), "r"(0u) : "memory");
}
__device__ __forceinline__ uint4 ld_cg16(const uint4* p) {
    uint4 r;
    asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
                 : "l"(p)
                 : "memory");
    return r;
}

extern "C" __global__ void __launch_bounds__(256) scrub_zero_verify(uint4* p, u64 n16, u32* flags) {
    const u64 stride = (u64)gridDim.x * blockDim.x;
    u32 bad = 0, seen = 0;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < n16; i += SCRUB_UNROLL * stride) {
#pragma unroll
        for (int u = 0; u < SCRUB_UNROLL; u++) {
            const u64 j = i + u * stride;
            if (j < n16) st_zero16(p + j);
        }
#pragma unroll
        for (int u = 0; u < SCRUB_UNROLL; u++) {
            const u64 j = i + u * stride;
            if (j < n16) {
                const uint4 r = ld_cg16(p + j);
                bad |= r.x | r.y | r.z | r.w;
                seen++;
            }
        }
    }
    const u32 wseen = warp_sum_u32(seen);
    const u32 wbad = __any_sync(FULL_MASK, bad != 0);
    if (threadIdx.x % WARP == 0) {
        if (wbad) atomicOr(flags, 1u);
        if (wseen) atomicAdd(reinterpret_cast<unsigned long long*>(flags + 2), (unsigned long long)wseen);
    }
}
