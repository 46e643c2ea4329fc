"""Worker mode, started by stages.run_backend_subprocess: `python -m cosyvoice_onnx.tools.bench JOB_JSON OUT_JSON`
(a module of its own, so the package's import of `stages` does not run it twice)."""

import json
import sys
from pathlib import Path

from .stages import run_backend

Path(sys.argv[2]).write_text(json.dumps(run_backend(json.loads(sys.argv[1]), Path(sys.argv[2]))))
