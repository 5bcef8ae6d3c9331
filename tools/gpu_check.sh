#!/usr/bin/env bash
# One prepared GPU check (issue 22), at most BUDGET_S (default 540 s) of wall time on one GPU.
# Run from the repo root, with the Liger-Kernel wheel carried along (the lent machine has no
# network; wheels/ is git-ignored, so it travels only when named):
#
#     pip download liger-kernel --no-deps -d wheels/          # here, once (pure Python, ~0.9 MB)
#     (plus, as py3.12 manylinux wheels: pydantic, pydantic_core, annotated-types, typing-inspection,
#     onnxslim, onnxconverter-common, optuna, alembic, colorlog, sqlalchemy, mako, mlxtend,
#     faster-coco-eval, jsonschema and its three helpers: the image lacks them)
#     run(command="OUT=/tmp/g PACK=$OUT/gpu-results.tgz bash tools/gpu_check.sh", carry=["wheels"], timeout_s=600)
#
# Writes under $OUT (default ./gpu-results), in this order of priority (a step whose limit no
# longer fits in what is left of BUDGET_S is cut short or skipped, and says so in summary.txt):
#   1. nvidia-smi + versions;
#   2. the fused-KD kernel tests, natively (kd-tests.log, junit-kd.xml): parity with the
#      reference in the three regimes, the fp64-oracle rule for fp16/bf16, opcheck,
#      torch.compile, the autotuned launch;
#   3. the KD-loss benchmark (bench/bench_kd_loss.{csv,json}): fused vs eager vs torch.compile
#      vs Liger-Kernel at 8192x1000, 8192x32768, 4096x128256 in bf16 and fp32: CUDA-event
#      time, device time (profiler kernel sum), Python call time, effective GB/s, peak memory
#      above the inputs (and over the gradient's size);
#   4. training samples/s, distill.train_student vs a minimal loop, batch 64 and 256, bf16 and
#      fp32 (bench-train-{bf16,fp32}/bench_train.json);
#   5. the end-to-end demo on CUDA (demo-report.json; target <= 25 s);
#   6. the other `-m gpu` tests;
#   7. with RUN_EXTRA=1 only: the late-fusion teacher and a 1-GPU torchrun smoke run (both
#      passed on 2026-12-04).
#   8. tools/profile_host.py: where the host time goes (the training step against the minimal
#      loop, one fused KD call), as operator and cProfile tables;
# and summary.txt, one line per step: name, exit code, seconds, command. Every step runs even
# if an earlier one failed. TensorRT and onnxruntime-gpu cannot be installed there: their checks
# skip unless the image has them.
set -u

OUT="${OUT:-./gpu-results}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-540}"
T_TESTS="${T_TESTS:-170}"     # native Triton compiles dominate; several pytest workers if xdist is there
T_BENCH="${T_BENCH:-150}"     # writes partial results after every shape
T_SCALE="${T_SCALE:-100}"     # per amp setting, both batch sizes (the PNGs are written before, by `images`)
T_DEMO="${T_DEMO:-75}"
T_GPU_TESTS="${T_GPU_TESTS:-40}"

mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/summary.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # import the checkout even if the install step fails
export PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
START=$(date +%s)

# step NAME LIMIT_S CMD...: run CMD with a time limit (cut to what is left of the budget), log to
# $OUT/NAME.log, record rc (124: the limit was reached).
step() {
    local name=$1 limit=$2
    shift 2
    if [ -n "${STEPS:-}" ] && [[ " $STEPS " != *" $name "* ]]; then
        return 0  # STEPS="a b": only those steps (a rerun of what changed)
    fi
    local left=$(( BUDGET_S - ($(date +%s) - START) ))
    if [ "$left" -lt 15 ]; then
        printf '%-12s skipped: budget spent (%ss of %ss)\n' "$name" "$(( BUDGET_S - left ))" "$BUDGET_S" >>"$OUT/summary.txt"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    local t0 rc
    t0=$(date +%s)
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    printf '%-12s rc=%-4s %5ss  %s\n' "$name" "$rc" "$(( $(date +%s) - t0 ))" \
        "$(printf '%s ' "$@" | tr -s '\n ' '  ' | cut -c1-110)" >>"$OUT/summary.txt"
    tail -n 3 "$OUT/$name.log"
    return 0
}

# --- 1. machine and versions ------------------------------------------------------------
step nvidia_smi 20 bash -c 'nvidia-smi; echo; nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem,driver_version --format=csv'

# Carried wheels (Liger-Kernel and the project's dependencies the image lacks: pydantic, onnxslim,
# onnxconverter-common, optuna, mlxtend, faster-coco-eval, ...) into a folder on PYTHONPATH (no
# resolver, no network).
SITE_DIR="${SITE_DIR:-/tmp/distill-export-site}"  # not under $OUT: only a few files come back from there
if ls wheels/*.whl >/dev/null 2>&1; then
    step wheels 60 "$PY" -m pip install -q --no-deps --no-index --no-compile --target "$SITE_DIR" wheels/*.whl
    export PYTHONPATH="$PYTHONPATH:$SITE_DIR"
else
    echo "wheels       no wheels/*.whl carried: the benchmark skips Liger, and imports the image lacks fail" >>"$OUT/summary.txt"
fi

step versions 30 "$PY" - <<'EOF'
import importlib, platform, sys
print("python", sys.version.replace("\n", " "), platform.platform())
for mod in ["torch", "triton", "numpy", "onnx", "onnxruntime", "tensorrt", "typer", "yaml", "liger_kernel", "pytest", "xdist"]:
    try:
        m = importlib.import_module(mod)
        print(f"{mod:14s}", getattr(m, "__version__", "?"))
    except Exception as exc:
        print(f"{mod:14s} not importable ({type(exc).__name__})")
import torch
print("cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"{p.total_memory / 2**30:.1f} GiB", "SMs", p.multi_processor_count, f"cc {p.major}.{p.minor}")
EOF

# --- install the CLI if needed (no network: no dependencies, no build isolation) ---------
if ! command -v distill-export >/dev/null 2>&1; then
    step install 60 "$PY" -m pip install --no-deps --no-build-isolation -e .
fi

# --- 2. fused KD kernel tests, natively on CUDA -------------------------------------------
# --noconftest: these tests need no shared fixture. pyproject's addopts ask for `-n auto`;
# here 8 workers (KD_WORKERS) if pytest-xdist is on the image (the Triton compiles run in parallel; the
# tests are small and share the GPU well), else one process.
PYTEST_OPTS=(-o addopts= -o required_plugins= -p no:cacheprovider --noconftest -q -rfEs)
if "$PY" -c "import xdist" >/dev/null 2>&1; then PAR=(-n "${KD_WORKERS:-8}"); else PAR=(-p no:xdist); fi
step kd_tests "$T_TESTS" "$PY" -m pytest "${PYTEST_OPTS[@]}" "${PAR[@]}" \
    tests/test_kd_triton.py tests/test_kd_triton_numerics.py tests/test_kd_loss.py tests/test_methods.py \
    --junitxml="$OUT/junit-kd.xml"

# --- 3. benchmark: fused vs eager vs torch.compile vs Liger, one interleaved run --------------
step bench "$T_BENCH" "$PY" tools/bench_kd_loss.py --out "$OUT/bench" --reps 20 \
    --shapes 8192x1000,8192x32768,4096x128256 --dtypes bf16,fp32 --impls fused,eager,compile,liger

# --- 4. training: distill.train_student vs a minimal loop, batch 64 and 256 -------------------
# mobilenet_v3_small at 96x96 on synthetic PNGs (written once, shared by both steps).
# The PNGs first, in their own step (7 s here). scale_bf16 ran out of its 65 s and 90 s limits on
# 2026-12-06 while scale_fp32 after it took 32-69 s: the first process compiles every autotuning
# config of the fused kernel (Triton caches them on disk for the next), so it gets T_SCALE_FIRST.
step images 90 "$PY" -c "import sys; from pathlib import Path; sys.path.insert(0, 'tools'); \
from bench_train import write_images; write_images(Path(sys.argv[1]), 4096)" "$OUT/bench-train-images"
for amp in bf16 off; do
    name=$([ "$amp" = off ] && echo fp32 || echo bf16)
    limit=$([ "$amp" = bf16 ] && echo "${T_SCALE_FIRST:-150}" || echo "$T_SCALE")
    step "scale_$name" "$limit" "$PY" tools/bench_train.py --skip memory workers --device cuda --amp "$amp" \
        --batch-sizes 64 256 --throughput-rows 4096 --repeats 2 --images "$OUT/bench-train-images" \
        --out "$OUT/bench-train-$name"
done
# --- 4b. where the host time goes: the training step vs the minimal loop, one fused KD call -----
step profile_host "${T_PROFILE:-60}" "$PY" tools/profile_host.py --out "$OUT/profile" --images "$OUT/bench-train-images"
rm -rf "$OUT/bench-train-images"  # thousands of PNGs: not worth bringing back

# --- 5. end-to-end demo on CUDA (target <= 25 s) --------------------------------------------
step demo "$T_DEMO" bash -c '
    if command -v distill-export >/dev/null 2>&1; then
        distill-export run --device cuda --out "$0/demo-run" --quiet
    else
        "$1" -c "import sys; from distill_export.entry import main; sys.argv[0] = \"distill-export\"; sys.exit(main())" \
            run --device cuda --out "$0/demo-run" --quiet
    fi' "$OUT" "$PY"
if [ -f "$OUT/demo-run/report.json" ]; then
    cp "$OUT/demo-run/report.json" "$OUT/demo-report.json"
    rm -rf "$OUT/demo-run/checkpoints" "$OUT/demo-run/teacher_outputs" "$OUT/demo-run/control_teacher_outputs"
else
    echo "demo         no report.json" >>"$OUT/summary.txt"
fi

# --- 6. other checks that need a GPU (export/TensorRT tests skip cleanly without TensorRT) -----
# (with the conftest: the export tests' fixtures build a tiny run)
step gpu_tests "$T_GPU_TESTS" "$PY" -m pytest -o addopts= -o required_plugins= -p no:cacheprovider -q -rfEs -p no:xdist tests -m gpu \
    --ignore=tests/test_kd_triton.py --ignore=tests/test_kd_triton_numerics.py --junitxml="$OUT/junit-gpu.xml"

# --- 7. optional: late-fusion teacher, 1-GPU torchrun smoke run ------------------------------
if [ "${RUN_EXTRA:-0}" = 1 ]; then
    step late_fusion 60 "$PY" -m distill_export train-teacher --teacher-fusion late --teacher-epochs 1 --device cuda \
        --out "$OUT/late-teacher" --quiet
    step ddp_smoke 120 "$PY" -m torch.distributed.run --standalone --nproc-per-node 1 -m distill_export run \
        --device cuda --epochs 2 --teacher-epochs 2 --no-self-training-control --out "$OUT/ddp-run" --quiet
fi

# PACK=FILE: everything above in one archive (the device tool brings back only a few files), without
# model files.
if [ -n "${PACK:-}" ]; then
    tar czf "$PACK" --exclude='*.onnx' --exclude='*.pt' --exclude='*.npy' --exclude='*.npz' \
        -C "$(dirname "$OUT")" "$(basename "$OUT")"
fi

echo
echo "summary ($OUT/summary.txt), $(( $(date +%s) - START ))s of ${BUDGET_S}s:"
cat "$OUT/summary.txt"
