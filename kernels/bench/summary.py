# Side-by-side table of bulwark-kernels' GPU benchmark and the PyTorch anchor taken in the same
# run on the same GPU. Usage: python3 summary.py OUT_DIR  (reads bench.json, anchor.json,
# torch_cpu.json where present; writes summary.md and prints it).
import json
import os
import sys

d = sys.argv[1]


def load(name):
    p = os.path.join(d, name)
    return json.load(open(p)) if os.path.exists(p) else {}


b, a, tc = load("bench.json"), load("anchor.json"), load("torch_cpu.json")
rows = [("measure", "bulwark", "PyTorch / reference", "ratio", "target")]


def row(name, ours, theirs, target, higher_better=True):
    if ours is None:
        return
    ratio = (ours / theirs if higher_better else theirs / ours) if theirs else None
    fmt = lambda v: f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    rows.append((name, fmt(ours), fmt(theirs) if theirs else "-", f"{ratio:.2f}x" if ratio else "-", target))


row("MiniLM-L6 B256 L128 bf16, sent/s", b.get("minilm_bf16_B256_L128_sent_per_s"), a.get("minilm_float16_B256_L128_sent_per_s"), ">= 60k (1.2x), stretch 75k")
row("MiniLM-L6 B256 L128 f16, sent/s", b.get("minilm_f16_B256_L128_sent_per_s"), a.get("minilm_float16_B256_L128_sent_per_s"), ">= 60k")
row("MiniLM-L6 B32 L128 bf16, sent/s", b.get("minilm_bf16_B32_L128_sent_per_s"), a.get("minilm_float16_B32_L128_sent_per_s"), "-")
row("MiniLM-L6 B1 L16 bf16 forward, ms", b.get("minilm_bf16_B1_L16_ms"), a.get("minilm_float16_B1_L16_ms"), "-", higher_better=False)
q = b.get("query", {})
row("query B1 L16 end to end (tok+embed+top10/100k), ms", q.get("end_to_end_ms"), a.get("minilm_float16_B1_L16_ms"), "<= 0.3 ms", higher_better=False)
s = b.get("scrub", {})
row("scrub zero+verify, GB/s", s.get("scrub_verify_GBps"), a.get("zero_GBps_w"), ">= 0.8x memset")
row("memset (same run, our context), GB/s", s.get("memset_GBps"), a.get("zero_GBps_w"), "-")
g = b.get("gemm", {})
for (m, k, n) in [(32768, 384, 1536), (32768, 1536, 384), (32768, 384, 384)]:
    row(f"GEMM bf16 {m}x{k}x{n}, TFLOP/s", g.get(f"gemm_bf16_{m}x{k}x{n}_TFLOPs"), a.get(f"gemm_bf16_{m}x{k}x{n}_TFLOPs"), ">= 0.7x cuBLAS")
c = b.get("cpu", {})
row(f"CPU backend B{c.get('batch')} L{c.get('len')} ({c.get('threads')} threads), sent/s", c.get("sent_per_s"), tc.get("sent_per_s"), "for the record")
w = [max(len(r[i]) for r in rows) for i in range(5)]
lines = ["| " + " | ".join(r[i].ljust(w[i]) for i in range(5)) + " |" for r in rows]
lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
dev = b.get("device", {})
text = f"Device: {dev.get('name')} ({a.get('device', '?')} for PyTorch)\n\n" + "\n".join(lines) + "\n"
open(os.path.join(d, "summary.md"), "w").write(text)
print(text)
