#!/usr/bin/env python3
"""A warp-level model of the tensor-core data movement in gemm.cu and attention.cu.

No GPU is needed: this re-implements, lane by lane, what the kernels do with shared memory,
ldmatrix and mma.sync m16n8k16, using the fragment layouts of the PTX ISA (section "Matrix
fragments for mma.m16n8k16" and "ldmatrix"). It then runs the kernels' own index arithmetic
(swizzled tiles, cp.async chunk assignment, fragment addresses, epilogue mapping, online
softmax) on random inputs and compares with numpy.

It checks our index math, not the hardware: a bug in how the PTX instructions are modelled here
would be repeated in both. The GPU parity tests (scripts/gpu-run.sh) are the real check.

Usage: python3 kernels/tools/mma_model.py   (needs numpy)
"""
import math
import sys

import numpy as np

WARP = 32


def swz(ch_per_row, row, chunk):
    # common.cuh: chunk ^ ((row / (8 / CH)) % CH)
    return chunk ^ ((row // (8 // ch_per_row)) % ch_per_row)


def tile_off(ch_per_row, row, chunk):
    return row * (ch_per_row * 8) + swz(ch_per_row, row, chunk) * 8


def ldsm_x4(smem, addrs, trans=False):
    """addrs: 32 element offsets (lane i gives the row address for matrix i // 8, row i % 8).
    Returns regs[lane][4] of (lo, hi) element pairs."""
    regs = [[None] * 4 for _ in range(WARP)]
    for m in range(4):
        rows = [smem[addrs[8 * m + r]: addrs[8 * m + r] + 8] for r in range(8)]
        for lane in range(WARP):
            g, t = lane // 4, lane % 4
            if not trans:
                regs[lane][m] = (rows[g][2 * t], rows[g][2 * t + 1])
            else:
                regs[lane][m] = (rows[2 * t][g], rows[2 * t + 1][g])
    return regs


def mma(d, a, b0, b1):
    """d: [32][4] floats, a: [32][4] pairs, b0/b1: [32] pairs. D += A(16x16) B(16x8)."""
    A = np.zeros((16, 16))
    B = np.zeros((16, 8))
    for lane in range(WARP):
        g, t = lane // 4, lane % 4
        for r, (row, col) in enumerate([(g, 2 * t), (g + 8, 2 * t), (g, 2 * t + 8), (g + 8, 2 * t + 8)]):
            A[row, col], A[row, col + 1] = a[lane][r]
        B[2 * t, g], B[2 * t + 1, g] = b0[lane]
        B[2 * t + 8, g], B[2 * t + 9, g] = b1[lane]
    D = A @ B
    for lane in range(WARP):
        g, t = lane // 4, lane % 4
        d[lane][0] += D[g, 2 * t]
        d[lane][1] += D[g, 2 * t + 1]
        d[lane][2] += D[g + 8, 2 * t]
        d[lane][3] += D[g + 8, 2 * t + 1]


def gemm_tc(X, W, bias, R, M, N, K, flags):
    """gemm.cu gemm_tc, every block, every warp, every lane."""
    BM, BN, BK, STAGES, CH = 128, 128, 32, 3, 4
    Y = np.full((M, N), np.nan)
    ktiles = (K + BK - 1) // BK
    for by in range((M + BM - 1) // BM):
        for bx in range((N + BN - 1) // BN):
            bm, bn = by * BM, bx * BN
            smA = [np.full(BM * BK, np.nan) for _ in range(STAGES)]
            smB = [np.full(BN * BK, np.nan) for _ in range(STAGES)]

            def load_stage(stage, kt):
                k0 = kt * BK
                for tid in range(256):
                    for i in range(2):
                        c = tid + i * 256
                        row, ch = c // CH, c % CH
                        k = k0 + ch * 8
                        ga, gb = bm + row, bn + row
                        off = tile_off(CH, row, ch)
                        smA[stage][off:off + 8] = X[ga, k:k + 8] if (ga < M and k < K) else 0.0
                        smB[stage][off:off + 8] = W[gb, k:k + 8] if (gb < N and k < K) else 0.0

            acc = [[[[0.0] * 4 for _ in range(WARP)] for _ in range(4)] for _ in range(4)]
            acc = {(w, mi, ni): [[0.0] * 4 for _ in range(WARP)] for w in range(8) for mi in range(4) for ni in range(4)}
            # Pipeline order (prologue, then wait / refill / compute) as in the kernel; the model
            # executes it sequentially, so it checks which stage holds which k-tile.
            for s in range(STAGES - 1):
                if s < ktiles:
                    load_stage(s, s)
            for kt in range(ktiles):
                nk = kt + STAGES - 1
                s = kt % STAGES
                for warp in range(8):
                    wm, wn = warp // 4, warp % 4
                    for kk in range(BK // 16):
                        a = []
                        for mi in range(4):
                            addrs = [tile_off(CH, wm * 64 + mi * 16 + (l % 16), kk * 2 + l // 16) for l in range(WARP)]
                            a.append(ldsm_x4(smA[s], addrs))
                        b = []
                        for p in range(2):
                            addrs = [tile_off(CH, wn * 32 + p * 16 + (l % 8) + (l // 16) * 8, kk * 2 + (l // 8) % 2) for l in range(WARP)]
                            b.append(ldsm_x4(smB[s], addrs))
                        for mi in range(4):
                            for ni in range(4):
                                b0 = [b[ni // 2][l][(ni % 2) * 2] for l in range(WARP)]
                                b1 = [b[ni // 2][l][(ni % 2) * 2 + 1] for l in range(WARP)]
                                mma(acc[(warp, mi, ni)], a[mi], b0, b1)
                # The refill happens after the barrier at the top of the next use; in the kernel it is
                # issued before computing tile kt into stage (kt-1)%3, which no warp still reads.
                if nk < ktiles:
                    assert nk % STAGES != s
                    load_stage(nk % STAGES, nk)
            for warp in range(8):
                wm, wn = warp // 4, warp % 4
                for lane in range(WARP):
                    g, t = lane // 4, lane % 4
                    for mi in range(4):
                        for ni in range(4):
                            for h in range(2):
                                row = bm + wm * 64 + mi * 16 + g + 8 * h
                                col = bn + wn * 32 + ni * 8 + t * 2
                                if row >= M or col >= N:
                                    continue
                                for e in range(2):
                                    v = acc[(warp, mi, ni)][lane][2 * h + e] + bias[col + e]
                                    if flags & 1:
                                        v = 0.5 * v * (1 + math.erf(v / math.sqrt(2)))
                                    if flags & 2:
                                        v += R[row, col + e]
                                    Y[row, col + e] = v
    return Y


def attn_tc(qkv, cu, heads, D):
    """attention.cu attn_tc for every tile and head."""
    CH, KS, NT_O = D // 8, D // 16, D // 8
    T = qkv.shape[0]
    H = heads * D
    out = np.full((T, H), np.nan)
    tiles = []
    for b in range(len(cu) - 1):
        r = cu[b]
        while r < cu[b + 1]:
            tiles.append((b, r))
            r += 64
    scale_log2 = math.log2(math.e) / math.sqrt(D)
    for (seq, q0) in tiles:
        s_begin, s_end = cu[seq], cu[seq + 1]
        for head in range(heads):
            sQ = np.full(64 * D, np.nan)
            for c in range(64 * CH):
                r, ch = c // CH, c % CH
                tok = q0 + r
                off = tile_off(CH, r, ch)
                sQ[off:off + 8] = qkv[tok, head * D + ch * 8: head * D + ch * 8 + 8] if tok < s_end else 0.0
            for warp in range(4):
                qf = [ldsm_x4(sQ, [tile_off(CH, warp * 16 + (l % 16), ks * 2 + l // 16) for l in range(WARP)]) for ks in range(KS)]
                o = [[[0.0] * 4 for _ in range(WARP)] for _ in range(NT_O)]
                m_run = [[-math.inf] * 2 for _ in range(WARP)]
                l_run = [[0.0] * 2 for _ in range(WARP)]
                for k0 in range(s_begin, s_end, 64):
                    sK = np.full(64 * D, np.nan)
                    sV = np.full(64 * D, np.nan)
                    for c in range(64 * CH):
                        r, ch = c // CH, c % CH
                        tok = k0 + r
                        off = tile_off(CH, r, ch)
                        base = head * D + ch * 8
                        sK[off:off + 8] = qkv[tok, H + base: H + base + 8] if tok < s_end else 0.0
                        sV[off:off + 8] = qkv[tok, 2 * H + base: 2 * H + base + 8] if tok < s_end else 0.0
                    s = [[[0.0] * 4 for _ in range(WARP)] for _ in range(8)]
                    for ks in range(KS):
                        for np_ in range(4):
                            b = ldsm_x4(sK, [tile_off(CH, np_ * 16 + (l % 8) + (l // 16) * 8, ks * 2 + (l // 8) % 2) for l in range(WARP)])
                            mma(s[2 * np_], qf[ks], [b[l][0] for l in range(WARP)], [b[l][1] for l in range(WARP)])
                            mma(s[2 * np_ + 1], qf[ks], [b[l][2] for l in range(WARP)], [b[l][3] for l in range(WARP)])
                    # scale / mask / row max (quad reduction = lanes 4g..4g+3)
                    mx = [[-math.inf] * 2 for _ in range(WARP)]
                    for lane in range(WARP):
                        t = lane % 4
                        for nt in range(8):
                            for j in range(4):
                                key = k0 + nt * 8 + t * 2 + (j & 1)
                                s[nt][lane][j] = s[nt][lane][j] * scale_log2 if key < s_end else -math.inf
                                mx[lane][j // 2] = max(mx[lane][j // 2], s[nt][lane][j])
                    for lane in range(WARP):
                        g = lane // 4
                        quad = range(4 * g, 4 * g + 4)
                        for h in range(2):
                            qm = max(mx[q][h] for q in quad)
                            m_new = max(m_run[lane][h], qm)
                            corr = 2 ** (m_run[lane][h] - m_new) if m_run[lane][h] != -math.inf else 0.0
                            m_run[lane][h] = m_new
                            l_run[lane][h] *= corr
                            for i in range(NT_O):
                                o[i][lane][2 * h] *= corr
                                o[i][lane][2 * h + 1] *= corr
                    for lane in range(WARP):
                        for nt in range(8):
                            for j in range(4):
                                p = 2 ** (s[nt][lane][j] - m_run[lane][j // 2])
                                s[nt][lane][j] = p
                                l_run[lane][j // 2] += p
                    for kk in range(4):
                        a = [[(s[2 * kk][l][0], s[2 * kk][l][1]), (s[2 * kk][l][2], s[2 * kk][l][3]),
                              (s[2 * kk + 1][l][0], s[2 * kk + 1][l][1]), (s[2 * kk + 1][l][2], s[2 * kk + 1][l][3])] for l in range(WARP)]
                        for dp in range(D // 16):
                            b = ldsm_x4(sV, [tile_off(CH, kk * 16 + (l % 8) + ((l // 8) % 2) * 8, dp * 2 + l // 16) for l in range(WARP)], trans=True)
                            mma(o[2 * dp], a, [b[l][0] for l in range(WARP)], [b[l][1] for l in range(WARP)])
                            mma(o[2 * dp + 1], a, [b[l][2] for l in range(WARP)], [b[l][3] for l in range(WARP)])
                for lane in range(WARP):
                    g, t = lane // 4, lane % 4
                    quad = range(4 * g, 4 * g + 4)
                    for h in range(2):
                        lsum = sum(l_run[q][h] for q in quad)
                        tok = q0 + warp * 16 + g + h * 8
                        if tok < s_end:
                            for i in range(NT_O):
                                col = head * D + i * 8 + t * 2
                                out[tok, col] = o[i][lane][2 * h] / lsum
                                out[tok, col + 1] = o[i][lane][2 * h + 1] / lsum
    return out


def attn_ref(qkv, cu, heads, D):
    T = qkv.shape[0]
    H = heads * D
    out = np.zeros((T, H))
    for b in range(len(cu) - 1):
        s0, s1 = cu[b], cu[b + 1]
        for h in range(heads):
            q = qkv[s0:s1, h * D:(h + 1) * D]
            k = qkv[s0:s1, H + h * D:H + (h + 1) * D]
            v = qkv[s0:s1, 2 * H + h * D:2 * H + (h + 1) * D]
            sc = q @ k.T / math.sqrt(D)
            p = np.exp(sc - sc.max(axis=1, keepdims=True))
            out[s0:s1, h * D:(h + 1) * D] = (p / p.sum(axis=1, keepdims=True)) @ v
    return out


def rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main():
    rng = np.random.default_rng(1)
    ok = True
    # GEMM: edges in M and N, K not a multiple of the 32-wide k-tile, every epilogue.
    for (M, N, K, flags) in [(16, 8, 8, 0), (130, 136, 40, 1), (70, 264, 96, 2), (129, 128, 64, 3)]:
        X = rng.standard_normal((M, K))
        W = rng.standard_normal((N, K)) / math.sqrt(K)
        bias = rng.standard_normal(N)
        R = rng.standard_normal((M, N))
        ref = X @ W.T + bias
        if flags & 1:
            ref = 0.5 * ref * (1 + np.vectorize(math.erf)(ref / math.sqrt(2)))
        if flags & 2:
            ref = ref + R
        Y = gemm_tc(X, W, bias, R, M, N, K, flags)
        e = rel(Y, ref) if not np.isnan(Y).any() else float("inf")
        print(f"gemm_tc model {M}x{N}x{K} flags={flags}: rel err {e:.2e}")
        ok &= e < 1e-12
    # Attention: several sequences, one longer than a 64-row tile, head sizes 32 and 64.
    for (lens, heads, D) in [([1, 5], 1, 32), ([70, 3, 64], 2, 32), ([33, 130], 1, 64)]:
        cu = [0]
        for l in lens:
            cu.append(cu[-1] + l)
        qkv = rng.standard_normal((cu[-1], 3 * heads * D))
        got = attn_tc(qkv, cu, heads, D)
        want = attn_ref(qkv, cu, heads, D)
        e = rel(got, want) if not np.isnan(got).any() else float("inf")
        print(f"attn_tc model lens={lens} heads={heads} D={D}: rel err {e:.2e}")
        ok &= e < 1e-12
    # Bank conflicts: the 8 row addresses of each ldmatrix phase hit 8 distinct 16-byte groups.
    for CH in (4, 8):
        for base in range(0, 64, 8):
            for chunk in range(CH):
                groups = {(tile_off(CH, base + r, chunk) * 2 // 16) % 8 for r in range(8)}
                ok &= len(groups) == 8
    print("bank-conflict check:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
