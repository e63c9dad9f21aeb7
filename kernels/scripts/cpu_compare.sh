#!/usr/bin/env bash
# CPU backend vs PyTorch on the CPU, back to back on the same machine and shapes.
#
#   PYTHON=/path/to/venv/bin/python kernels/scripts/cpu_compare.sh [OUT_DIR] [ROUNDS]
#
# Builds bulwark-kernels-bench (release), then for each round runs, per shape (B32 L128,
# B256 L16), the Rust CPU backend and PyTorch (kernels/scripts/cpu_anchor.py speed, 2 threads),
# alternating so that background load hits both sides alike. Writes one JSON per run to OUT_DIR
# (default: a fresh temp dir) and prints a table of the medians.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-python3}
OUT=${1:-$(mktemp -d)}
ROUNDS=${2:-2}
REPS=${REPS:-5}
THREADS=${THREADS:-2}
mkdir -p "$OUT"
cargo build --release -q -p bulwark-kernels --bin bulwark-kernels-bench
BENCH=${CARGO_TARGET_DIR:-target}/release/bulwark-kernels-bench
{ date -u +%FT%TZ; nproc; grep -m1 'model name' /proc/cpuinfo; } > "$OUT/machine.txt"
for r in $(seq 1 "$ROUNDS"); do
  for s in 32x128 256x16; do
    b=${s%x*}; l=${s#*x}
    echo "round $r B$b L$l: load $(cut -d' ' -f1 /proc/loadavg)"
    RAYON_NUM_THREADS=$THREADS "$BENCH" cpu --batch "$b" --len "$l" --reps "$REPS" --out "$OUT/rust_${s}_r$r.json" > /dev/null
    "$PY" kernels/scripts/cpu_anchor.py speed --threads "$THREADS" --shapes "$s" --reps "$REPS" \
      --out "$OUT/torch_${s}_r$r.json" > /dev/null
  done
done
"$PY" - "$OUT" <<'EOF'
import glob, json, os, sys
d = sys.argv[1]
print(open(os.path.join(d, "machine.txt")).read().strip())
t0 = json.load(open(sorted(glob.glob(os.path.join(d, "torch_*.json")))[0]))
print(f"torch {t0['torch']}, {t0['threads']} threads, capability {t0['cpu_capability']}, attention {t0['attn_implementation']}")
print("| shape | round | bulwark CPU sent/s | PyTorch CPU sent/s | bulwark / PyTorch |")
print("|---|---|---|---|---|")
for f in sorted(glob.glob(os.path.join(d, "rust_*.json"))):
    s, r = os.path.basename(f)[5:-5].split("_")
    rust = json.load(open(f))["cpu"]["sent_per_s"]
    torch = json.load(open(os.path.join(d, f"torch_{s}_{r}.json")))["runs"][0]["sent_per_s"]
    print(f"| {s} | {r} | {rust:.1f} | {torch:.1f} | {rust / torch:.2f}x |")
EOF
echo "results in $OUT"
