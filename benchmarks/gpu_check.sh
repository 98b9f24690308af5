#!/usr/bin/env bash
# The checks and benchmarks that need a GPU, as one script for a short lease on a GPU machine.
#
# Phases, in order of priority, each capped and all within GPU_CHECK_SECONDS (default 540):
#   env        nvidia-smi, versions of python, torch, CuPy, HiGHS
#   nvcc       cuda_kernels/*.cu compiled to PTX (as .ci/run does where nvcc is on the PATH)
#   kernels    benchmarks/kernels.py: the CuPy kernels against their torch fallbacks (identical? how fast?)
#   profile    benchmarks/attack_profile.py --device cuda: where the attack's time goes, beside torchattacks
#   attack     benchmarks/attack.py --device cuda: restart-steps per second and the per-call API time
#   steps      benchmarks/relu_split.py --device cuda at equal work (300 splits a disjunct), the
#              multiplier steps in float64 and then in float32 (ReluSplitConfig.step_dtype)
#   tests      the whole test suite with CUDA visible (so every `device=None` path runs on the GPU);
#              -v names each failure as it happens (a suite cut at its cap still says which failed)
#   acasxu     all 186 acasxu instances, official timeouts, one `gpuopt run --device cuda` (bulk wall time)
#   falsify    benchmarks/attack.py --device cuda --sections falsify (gpuopt and torchattacks' PGD)
#   mnist_fc   all 90 mnist_fc instances through `gpuopt run --device cuda`, timeouts scaled by
#              MNIST_SCALE (default 0.25): a capped run, each result appended as it is decided
# Every phase's log and results go to $WORK; after each phase $WORK is packed into
# $OUT/gpu_check.tgz (a killed run keeps what finished) and a line goes to $OUT/phases.txt.
#
# Needs ../shared/benchmarks beside the repository (a copy may be linked there first: set
# BENCH_COPY to a folder holding the benchmarks) and highspy, pebble and torchattacks installed
# (WHEELS: a folder of wheels to install offline first).
#
# PHASES (default: all of them) names the phases to run, e.g. PHASES="env attack tests".
#
#   OUT=/tmp/out BENCH_COPY=.gpubench/benchmarks WHEELS=.whl bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=${OUT:-$REPO/benchmarks/results/gpu}
WORK=${WORK:-/tmp/gpu_check}
BUDGET=${GPU_CHECK_SECONDS:-540}
WORKERS=${WORKERS:-$(( $(nproc) - 1 ))}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK"
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

left() { echo $(( BUDGET - ($(date +%s) - START) )); }
pack() { tar czf "$OUT/gpu_check.tgz.tmp" -C "$WORK" . && mv "$OUT/gpu_check.tgz.tmp" "$OUT/gpu_check.tgz"; }
phase() {  # phase NAME CAP_SECONDS COMMAND...: runs COMMAND under min(CAP, time left), logs to $WORK/NAME.log
    local name=$1 cap=$2 rest t t0 rc
    shift 2
    case " ${PHASES:-$name} " in *" $name "*) ;; *) return ;; esac
    rest=$(left)
    t=$(( cap < rest ? cap : rest ))
    if [ "$t" -le 5 ]; then
        echo "$name skipped: ${rest}s left" | tee -a "$OUT/phases.txt"
        return
    fi
    echo "== $name (cap ${t}s)"
    t0=$(date +%s)
    timeout -k 5 "$t" "$@" > "$WORK/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))$([ $rc -eq 124 ] && echo ' (cut at its cap)')" \
        | tee -a "$OUT/phases.txt"
    tail -n "${TAIL_LINES:-15}" "$WORK/$name.log"
    # failures by name, also from a run cut at its cap (pytest -v prints each as it ends)
    grep -E " (FAILED|ERROR) " "$WORK/$name.log" | sed 's/^\[gw[0-9]*\] *//' | head -40 \
        | tee -a "$OUT/phases.txt"
    pack
}

if [ -n "${WHEELS:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "$WHEELS"/*.whl > "$WORK/install.log" 2>&1 \
        || { echo "wheel install failed:"; tail -5 "$WORK/install.log"; }
fi
if [ -n "${BENCH_COPY:-}" ] && [ ! -e ../shared/benchmarks ]; then
    mkdir -p ../shared && ln -sfn "$REPO/$BENCH_COPY" ../shared/benchmarks
fi

phase env 30 bash -c "nvidia-smi; nproc; $PY -c 'import sys, torch, numpy, highspy; print(sys.version); \
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name(0)); \
print(\"numpy\", numpy.__version__, \"highspy\", highspy.__version__ if hasattr(highspy, \"__version__\") else \"?\"); \
import cupy; print(\"cupy\", cupy.__version__)'"
phase nvcc 30 bash -c 'for src in cuda_kernels/*.cu; do nvcc --ptx -arch=sm_90 -o /dev/null "$src" && echo "$src ok"; done'
phase kernels 40 $PY benchmarks/kernels.py --out "$WORK/kernels.json" \
    --shapes ${KERNEL_SHAPES:-4096x1024 65536x1536 262144x512 1000000x256} \
    --step-shapes ${STEP_SHAPES:-1x4000x784 1x16000x784 64x256x3072}
phase profile 60 $PY benchmarks/attack_profile.py --device cuda --restarts-list ${PROFILE_RESTARTS:-4000 16000} \
    --out "$WORK/attack_profile.json"
phase attack 90 $PY benchmarks/attack.py --device cuda --sections throughput api \
    --restarts-list 1000 4000 16000 --out "$WORK/attack_throughput.json"
phase steps 90 bash -c "for dt in float64 float32; do $PY benchmarks/relu_split.py --device cuda --timeout 120 \
    --suites mnist_fc_256x4 mnist_fc_256x6 --match ${STEPS_MATCH:-prop_6_0.03 prop_2_0.05} \
    --config step_dtype=\$dt disjunct_domains=300 --out $WORK/relu_split_steps_\$dt.jsonl; done"
# TESTS: test files or node ids to run (default: the whole suite); each failure's traceback goes
# to $WORK/failures.txt as it happens (tests/conftest.py), so a run cut at its cap keeps them
GPUOPT_FAILURE_LOG="$WORK/failures.txt" phase tests "${TESTS_CAP:-240}" $PY -m pytest -v -p no:cacheprovider \
    -n "$WORKERS" -rfEs --durations=25 -k "not cifar_biasfield" ${TESTS:-}
phase acasxu 120 $PY benchmarks/vnncomp.py --suites acasxu_all --bulk --workers "$WORKERS" --run-args "--device cuda" \
    --results "$WORK/acasxu_all.jsonl"  # gpuopt run's own records, kept if cut: $WORK/acasxu_all.run.jsonl
phase falsify 150 $PY benchmarks/attack.py --device cuda --sections falsify --budget "${FALSIFY_BUDGET:-10}" \
    --variants gpuopt torchattacks-pgd --out "$WORK/attack_falsify.json"
phase mnist_fc 600 $PY -m gpuopt run ../shared/benchmarks/vnncomp2022/mnist_fc/instances.csv --device cuda \
    --workers "$WORKERS" --timeout-scale "${MNIST_SCALE:-0.25}" --results "$WORK/mnist_fc.jsonl"
echo "total $(( $(date +%s) - START )) s" | tee -a "$OUT/phases.txt"
pack
