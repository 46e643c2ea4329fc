#!/usr/bin/env bash
# Starts the studio: makes/reuses a venv, installs the pinned requirements, finds a model, serves on 127.0.0.1.
#   bash run.sh [--model DIR] [--host H] [--port P] [--share] [--auth user:pass] [--backend SPEC] [--source hf|modelscope]
set -euo pipefail
cd "$(dirname "$0")"

VENV="${COSYVOICE_VENV:-.venv}"
MODEL="${COSYVOICE_MODEL:-}"
SOURCE="huggingface"
APP_ARGS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --model) MODEL="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    -h|--help) sed -n '2,3p' "$0"; exit 0 ;;
    *) APP_ARGS+=("$1"); shift ;;
  esac
done

export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1 PIP_DISABLE_PIP_VERSION_CHECK=1

if [ ! -x "$VENV/bin/python" ]; then
  echo "[run.sh] creating virtual environment in $VENV"
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"
STAMP="$VENV/.requirements.sha256"
WANT="$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "[run.sh] installing pinned requirements (torch is pinned to the CPU build)"
  "$PY" -m pip install --quiet -r requirements.txt
  "$PY" -m pip install --quiet --no-deps -e .
  echo "$WANT" > "$STAMP"
else
  echo "[run.sh] reusing $VENV (requirements unchanged)"
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
