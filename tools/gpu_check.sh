#!/usr/bin/env bash
# The GPU check: one run on a lent CUDA machine, every step under a timeout, the whole script within ~7 minutes.
#
#   bash tools/gpu_check.sh                       # on the GPU machine; results in $OUT
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SIZE=tiny GPU_CHECK_WHEELS=0 GPU_CHECK_QUICK=1 OUT=/tmp/gpu_out \
#       bash tools/gpu_check.sh
#                                                 # the same steps on a CPU, to check the script before lending
#
# Steps: install the wheels in .gpu_wheels/ (what the GPU machine lacks; torch and onnxruntime are there) into a
# scratch site dir, build a real-size CosyVoice3 folder with random weights, `bench --device cuda` (PyTorch fp32,
# bf16, fp16 in one table, plus ONNX fp16 only where onnxruntime has the CUDA provider), then `parity --device cuda`
# for bf16, fp16 and fp32 against fp32 on the CPU. Writes to $OUT: summary.txt (each step's exit code and
# seconds), env.txt, nvidia-smi.txt, bench.txt + bench.json + bench.log, parity-<precision>.txt/.json/.log,
# micro.json (LM decode eager vs CUDA graph; the flow solve numpy vs device-resident, eager vs graphed;
# tools/gpu_micro.py).
set -u
cd "$(dirname "$0")/.."
DEVICE=${GPU_CHECK_DEVICE:-cuda}
SIZE=${GPU_CHECK_SIZE:-real}
BUDGET=${GPU_CHECK_BUDGET_S:-410}        # the whole script, seconds (kept under the 7-minute slot)
OUT=${OUT:-$PWD/gpu_check_out}
WORK=${GPU_CHECK_WORK:-$(mktemp -d)}
PY=${PYTHON:-python3}
START=$SECONDS
mkdir -p "$OUT"
: > "$OUT/summary.txt"

log() { echo "$*" | tee -a "$OUT/summary.txt"; }

# step NAME CAP_S COMMAND...: runs COMMAND under `timeout` of min(CAP_S, what is left of BUDGET), logs rc + time.
step() {
    local name=$1 cap=$2; shift 2
    local left=$((BUDGET - (SECONDS - START) - 5))
    local limit=$(( cap < left ? cap : left ))
    if (( limit < 15 )); then log "$name: skipped (budget spent)"; return 0; fi
    local t0=$SECONDS
    timeout --kill-after=5 "$limit" "$@"
    local rc=$?
    log "$name: rc=$rc in $((SECONDS - t0)) s (limit $limit s)"
    return 0
}

SITE="$WORK/site"
if compgen -G ".gpu_wheels/*.whl" > /dev/null; then
    # The target interpreter is named, so the same command also checks the wheels from another Python.
    step wheels 90 $PY -m pip install --quiet --no-index --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
        --target "$SITE" .gpu_wheels/*.whl > "$OUT/pip.log" 2>&1
fi
# GPU_CHECK_WHEELS=0: installed, but not put on the path (a machine whose Python is not the wheels' 3.12).
if [[ ${GPU_CHECK_WHEELS:-1} == 1 ]]; then
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi

command -v nvidia-smi > /dev/null && nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
step env 60 $PY - > "$OUT/env.txt" 2>&1 <<'PYEOF'
import platform, sys
import numpy, onnxruntime, torch
import soundfile, soxr  # from the wheels
import cosyvoice_onnx
from cosyvoice_onnx.devices import Device, resolve_onnx, resolve_torch
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(0), round(torch.cuda.get_device_properties(0).total_memory / 2**30), "GiB")
print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
print("numpy", numpy.__version__, "soundfile", soundfile.__version__, "soxr", soxr.__version__)
print("auto ->", "torch:", resolve_torch(Device("auto")), "onnx:", resolve_onnx(Device("auto")))
PYEOF

MODEL="$WORK/model-$SIZE"
step build 120 $PY -c "from cosyvoice_onnx.tools.tiny import make_tiny_model; \
make_tiny_model('$MODEL', version=3, seed=0, size='$SIZE')" > "$OUT/build.log" 2>&1

# The bench reuses the folder (its name is what `bench --size` builds); no export unless ONNX fp16 can run.
BACKENDS=torch,torch:bf16,torch:fp16
$PY -c "import onnxruntime as o, sys; sys.exit('CUDAExecutionProvider' not in o.get_available_providers())" \
    2> /dev/null && [[ $DEVICE == cuda* ]] && BACKENDS=$BACKENDS,onnx:fp16
step bench 260 $PY -m cosyvoice_onnx bench --size "$SIZE" --work "$WORK" --device "$DEVICE" \
    --backends "$BACKENDS" --backend-timeout "${GPU_CHECK_BACKEND_TIMEOUT_S:-75}" \
    --repeats "${GPU_CHECK_REPEATS:-3}" ${GPU_CHECK_QUICK:+--quick} --json "$OUT/bench.json" \
    > "$OUT/bench.txt" 2> "$OUT/bench.log"

parity() {
    step "parity-$1" 75 $PY -m cosyvoice_onnx parity --model "$MODEL" --device "$DEVICE" \
        --test-backend torch --precision "$1" --max-tokens "${GPU_CHECK_PARITY_TOKENS:-150}" \
        --json "$OUT/parity-$1.json" > "$OUT/parity-$1.txt" 2> "$OUT/parity-$1.log"
}
parity bf16
# LM decode eager vs CUDA graph, and the flow solve through numpy vs kept on the device.
step micro 60 $PY tools/gpu_micro.py "$MODEL" "$DEVICE" bf16 > "$OUT/micro.json" 2> "$OUT/micro.log"
parity fp16
parity fp32
log "total: $((SECONDS - START)) s"
