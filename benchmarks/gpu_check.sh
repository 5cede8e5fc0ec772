#!/usr/bin/env bash
# GPU check on one H100/H200, in under 8 minutes: environment, CUDA tests, training throughput of the
# full 640 px configuration (batch 64 and 128, bf16, channels_last, eager then torch.compile; compiled at
# batch 128 also end to end from a 640 px synthetic set through the real loader, with host-side and with
# device-side transforms), and decoding latency at batch 1 and 64 (cached against CUDA graphs).
#
# Run from anywhere on the GPU machine (torch there is python3's; nothing to install):
#     bash benchmarks/gpu_check.sh                   # JSON and the log go to benchmarks/results/
#     OUT=/some/dir bash benchmarks/gpu_check.sh     # ... or to $OUT
# Writes gpu_check.log, bench_train_eager.json, bench_train_compile.json, bench_decode.json and bench_eval.json.
#
# A failing section is reported and the next one runs; the exit status is 1 if any section failed.
# Sections that would not fit in the time left (GPU_CHECK_BUDGET_S, default 450 s) are skipped and
# listed, which is not a failure. Only pure-Python packages that the GPU image holds are needed:
# torch, numpy, pyyaml (seqtr_lib.config imports it) and tqdm (seqtr_lib.engine); pytest is optional.
set -euo pipefail

cd "$(dirname "$0")/.."
RESULTS="${OUT:-benchmarks/results}"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-450}"
# bench_decode runs before compiling, with this share, so that an open-ended compile cannot starve it.
DECODE_LIMIT_S=100
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

START=$SECONDS
FAILED=()
SKIPPED=()

remaining() { echo $((BUDGET_S - (SECONDS - START))); }

# section NAME COMMAND...: run the command; a non-zero exit is recorded as a failure.
# bounded_section NAME COMMAND...: the same, except that exit 124 (its `timeout` ran out) is recorded
# as skipped, since the benchmarks write their JSON after every configuration.
section() { run_section strict "$@"; }
bounded_section() { run_section bounded "$@"; }

run_section() {
    local kind=$1 name=$2 status=0
    shift 2
    echo
    echo "=== $name ($(remaining) s of the budget left) ==="
    "$@" || status=$?
    if ((status == 124)) && [[ $kind == bounded ]]; then
        SKIPPED+=("$name: stopped at its time limit (its JSON keeps the configurations measured before)")
    elif ((status != 0)); then
        FAILED+=("$name (exit $status)")
        echo "=== $name FAILED (exit $status)"
    fi
}

python_environment() {
    "$PYTHON" - <<'EOF'
import importlib.util
import sys

import torch

print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "| cuda", torch.version.cuda, "| cudnn", torch.backends.cudnn.version())
for name in ("numpy", "yaml", "tqdm", "cv2", "torchvision", "pytest", "pycocotools"):
    print(f"  {name:12s}", "present" if importlib.util.find_spec(name) else "MISSING")
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA device: nothing below can run")
print("device", torch.cuda.get_device_name(0), f"({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
import seqtr_lib.engine  # noqa: F401  the import path of the benchmarks and the CUDA tests
EOF
}

cuda_tests() {
    local files
    files=$(grep -l "pytest.mark.cuda" tests/test_*.py)
    if "$PYTHON" -c "import pytest" 2>/dev/null; then
        timeout --kill-after=10 150 "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider $files
    else
        echo "pytest is not installed: running tests/test_cuda.py's own runner (files with CUDA tests: $files)"
        timeout --kill-after=10 150 "$PYTHON" tests/test_cuda.py
    fi
}

train_eager() {
    timeout --kill-after=10 180 "$PYTHON" benchmarks/bench_train.py --device cuda --batch-sizes 64,128 \
        --compile off --amp bf16 --channels-last --out "$RESULTS/bench_train_eager.json"
}

decode() {
    local help limit
    limit=$(($(remaining) < DECODE_LIMIT_S ? $(remaining) : DECODE_LIMIT_S))
    help=$("$PYTHON" benchmarks/bench_decode.py --help) || return 1
    if [[ $help != *--device* || $help != *--out* ]]; then
        echo "benchmarks/bench_decode.py has no --device/--out flags; its --help:"
        echo "$help"
        return 1
    fi
    timeout --kill-after=10 "$limit" "$PYTHON" benchmarks/bench_decode.py --device cuda --models full_640 \
        --batch-sizes 1,64 --out "$RESULTS/bench_decode.json"
}

# Batch 128 first: it is the issue's target, and a compile cut short by the budget keeps its number. Its
# real-data runs read a 640 px synthetic set written (once) to $REAL_DATA.
REAL_DATA="${REAL_DATA:-/tmp/seqtr_synthetic_640}"
train_compiled() {
    timeout --kill-after=10 "$1" "$PYTHON" benchmarks/bench_train.py --device cuda --batch-sizes 128 \
        --compile on --amp bf16 --channels-last --real-data "$REAL_DATA" --real-images 2000 \
        --out "$RESULTS/bench_train_compile.json"
}

evaluation() {
    timeout --kill-after=10 "$1" "$PYTHON" benchmarks/bench_eval.py --device cuda --data-root "$REAL_DATA" \
        --images 2000 --out "$RESULTS/bench_eval.json"
}

summary() {
    "$PYTHON" - "$RESULTS" <<'EOF'
import json
import sys
from pathlib import Path

TARGET = 800  # samples/s at batch 128 on one H100 (issue 5)
for name in ("bench_train_eager.json", "bench_train_compile.json"):
    path = Path(sys.argv[1]) / name
    if not path.is_file():
        print(f"{name}: not written")
        continue
    report = json.loads(path.read_text())
    print(f"{name}: {report['device']}, torch {report['torch']}")
    for r in report["results"]:
        line = (f"  batch {r['batch_size']:4d}  compile {'on ' if r['compile'] else 'off'}  {r['status']:5s}"
                f"  peak {r.get('peak_memory_gib', float('nan')):6.2f} GiB")
        if r["status"] == "ok":
            line += f"  {r['samples_per_s']:8.1f} samples/s  {r['step_ms']:7.1f} ms/step  warm-up {r['warmup_s']:.0f} s"
            if r["batch_size"] == 128:
                line += f"  (target {TARGET}: {'met' if r['samples_per_s'] >= TARGET else 'NOT met'})"
        else:
            line += f"  {r.get('error', '')}"
        print(line)
        for inputs, real in (r.get("real_data") or {}).items():
            if real["status"] == "ok":
                print(f"    real data, transforms on the {inputs:6s} {real['samples_per_s']:8.1f} samples/s  "
                      f"ratio {real['real_loader_ratio']:.3f} (target 0.95)")
            else:
                print(f"    real data, transforms on the {inputs:6s} {real['error']}")
path = Path(sys.argv[1]) / "bench_eval.json"
if path.is_file():
    for r in json.loads(path.read_text())["results"]:
        print(f"evaluate {r['task']:4s} graphs {'on ' if r['cuda_graphs'] else 'off'}: {r['expressions_per_s']:8.1f} "
              f"expressions/s ({r['expressions']} in {r['seconds']} s)")
path = Path(sys.argv[1]) / "bench_decode.json"
if path.is_file():
    for r in json.loads(path.read_text())["results"]:
        print(f"decode {r['model']} {r['task']:4s} batch {r['batch']:3d}: cached {1000 * r['decode_cached_s']:7.2f} ms, "
              f"graphs {1000 * r['decode_graph_s']:7.2f} ms, x{r['graph_speedup']:.2f}, "
              f"tokens {'equal' if r['graph_tokens_equal'] else 'DIFFER'}")
EOF
}

main() {
    section "nvidia-smi" nvidia-smi
    section "python environment" python_environment
    if [[ " ${FAILED[*]} " == *"python environment"* ]]; then
        echo "no usable CUDA torch: stopping"
        return 1
    fi
    section "CUDA tests" cuda_tests
    bounded_section "training throughput, eager" train_eager
    if [[ -f benchmarks/bench_decode.py ]]; then
        if (($(remaining) >= 60)); then
            bounded_section "decoding latency" decode
        else
            SKIPPED+=("decoding latency: only $(remaining) s left (needs 60)")
        fi
    fi
    if (($(remaining) >= 120)); then
        bounded_section "training throughput, torch.compile" train_compiled "$(remaining)"
    else
        SKIPPED+=("training throughput, torch.compile: only $(remaining) s left (needs 120)")
    fi
    if (($(remaining) >= 60)); then
        bounded_section "evaluation throughput" evaluation "$(remaining)"
    else
        SKIPPED+=("evaluation throughput: only $(remaining) s left (needs 60)")
    fi

    echo
    echo "=== summary after $((SECONDS - START)) s ==="
    summary || FAILED+=("summary")
    for item in "${SKIPPED[@]}"; do echo "skipped: $item"; done
    for item in "${FAILED[@]}"; do echo "FAILED: $item"; done
    echo "results in $RESULTS"
    ((${#FAILED[@]} == 0))
}

mkdir -p "$RESULTS"
main 2>&1 | tee "$RESULTS/gpu_check.log"
