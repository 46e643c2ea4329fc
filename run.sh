#!/usr/bin/env bash
# Starts the studio, or runs the test suite: makes/reuses a venv, installs the pinned requirements, then
#   bash run.sh [--model DIR] [--host H] [--port P] [--share] [--auth user:pass] [--backend SPEC] [--source hf|modelscope]
#   bash run.sh --test [pytest args]      # also installs requirements-dev.txt, then: python -m pytest -q [args]
set -euo pipefail
cd "$(dirname "$0")"

VENV="${COSYVOICE_VENV:-.venv}"
MODEL="${COSYVOICE_MODEL:-}"
SOURCE="huggingface"
TEST=0
APP_ARGS=()
if [ "${1:-}" = "--test" ]; then
  TEST=1; shift; APP_ARGS=("$@"); set --
fi
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) APP_ARGS+=("$1"); shift ;;
  esac
done

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  echo "[run.sh] creating virtual environment in $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

# torch==2.13.0 from PyPI is the CUDA build on Linux x86_64 (several GB of CUDA libraries). Without an NVIDIA GPU
# we take the CPU build from PyTorch's own wheel index, when that index answers within a few seconds; otherwise
# the registry's wheel, and we say which one it was.
TORCH_CPU_INDEX="${COSYVOICE_TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}"
install_torch() {
  local want
  want="$(grep -E '^torch==' requirements.txt)"
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "[run.sh] NVIDIA GPU found: installing $want from the package registry (the CUDA build)"
  elif "$PY" - "$TORCH_CPU_INDEX" >/dev/null 2>&1 <<'PROBE'
# A thread with a deadline, because urlopen's timeout does not bound the DNS lookup.
import sys, threading, urllib.request
answered = []
probe = threading.Thread(target=lambda: answered.append(urllib.request.urlopen(sys.argv[1] + "/torch/", timeout=5)),
                         daemon=True)
probe.start()
probe.join(8)
sys.exit(0 if answered else 1)
PROBE
  then
    echo "[run.sh] no NVIDIA GPU: installing $want, CPU build, from $TORCH_CPU_INDEX"
    "$PY" -m pip install --quiet --timeout 30 --retries 1 --index-url "$TORCH_CPU_INDEX" "$want+cpu" \
      || echo "[run.sh] that failed: $want comes from the package registry instead"
  else
    echo "[run.sh] no NVIDIA GPU, but $TORCH_CPU_INDEX is unreachable: $want comes from the package registry"
    echo "         (on Linux x86_64 that is the CUDA build unless your registry serves another one)"
  fi
}

REQS=(requirements.txt)
[ "$TEST" = 1 ] && REQS+=(requirements-dev.txt)
STAMP="$VENV/.${REQS[-1]}.sha256"   # one per mode, so switching modes does not reinstall
WANT="$(cat "${REQS[@]}" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  "$PY" -c "import torch" >/dev/null 2>&1 || install_torch
  echo "[run.sh] installing pinned requirements: ${REQS[*]}"
  "$PY" -m pip install --quiet -r "${REQS[-1]}"
  "$PY" -m pip install --quiet --no-deps -e .
  echo "$WANT" > "$STAMP"
  "$PY" -c "import torch; cuda = torch.version.cuda
print('[run.sh] torch', torch.__version__, f'(CUDA {cuda} build)' if cuda else '(CPU build)')"
else
  echo "[run.sh] reusing $VENV (requirements unchanged)"
fi

if [ "$TEST" = 1 ]; then
  # The browser test drives the system Chromium; the suite never downloads a browser.
  if [ -x /usr/bin/chromium ]; then
    echo "[run.sh] browser test: runs with /usr/bin/chromium"
  else
    echo "[run.sh] browser test: SKIPPED, /usr/bin/chromium is absent."
    echo "         Enable it (Debian/Ubuntu): sudo apt-get install chromium"
  fi
  exec "$PY" -m pytest -q "${APP_ARGS[@]}"
fi

if [ -z "$MODEL" ]; then
  DEFAULT_MODEL="models/Fun-CosyVoice3-0.5B-2512"
  if [ -f "$DEFAULT_MODEL/cosyvoice3.yaml" ]; then
    MODEL="$DEFAULT_MODEL"
  else
    echo "[run.sh] no --model given; trying to download Fun-CosyVoice3-0.5B-2512 from $SOURCE into models/"
    "$PY" -m pip install --quiet huggingface_hub >/dev/null 2>&1 || true
    if "$PY" -m cosyvoice_onnx download --source "$SOURCE" --out models; then
      MODEL="$DEFAULT_MODEL"
    else
      echo "[run.sh] download failed (offline?). The studio starts anyway: open the Models tab, or restart with"
      echo "         bash run.sh --model /path/to/Fun-CosyVoice3-0.5B-2512   (or a tiny test model:"
      echo "         $PY -m cosyvoice_onnx make-tiny-model models/tiny && bash run.sh --model models/tiny)"
    fi
  fi
fi

MODEL_ARGS=()
[ -n "$MODEL" ] && MODEL_ARGS=(--model "$MODEL")
exec "$PY" app.py "${MODEL_ARGS[@]}" "${APP_ARGS[@]}"
