"""Error types with messages meant for the person using the CLI or the studio."""


class CosyVoiceError(Exception):
    """Base class: every error we raise on purpose carries a readable message."""


class ModelFolderError(CosyVoiceError):
    """The model folder is missing, incomplete, or holds files that do not match."""


class InputError(CosyVoiceError):
    """Bad user input: audio, text, names or options."""


class ExportError(CosyVoiceError):
    """An ONNX export is missing, corrupt, or stale for the model it is used with."""


class RequestTimeout(CosyVoiceError):
    """A synthesis request ran past its time limit (`max_seconds`)."""


def one_line(exc: BaseException, limit: int = 2000) -> str:
    """An error's message as one line (its lines joined with '; '), cut at `limit`; its type when it has none."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[:limit] + "…"
