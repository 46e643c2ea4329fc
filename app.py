"""Starts the CosyVoice ONNX Studio (Gradio); the same as `cosyvoice-onnx studio`. Options: `python app.py -h`."""

import sys

from cosyvoice_onnx.studio.serve import main

if __name__ == "__main__":
    sys.exit(main())
