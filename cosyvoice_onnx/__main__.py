"""`python -m cosyvoice_onnx` runs the command-line interface."""

from .cli import main

raise SystemExit(main())
