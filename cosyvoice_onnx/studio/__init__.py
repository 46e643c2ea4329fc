"""The Gradio studio: `Studio` holds engines, voices and history; `build_app` lays out the page.

Names load on first use, so that `cosyvoice_onnx.studio.options` (the command line) imports no Gradio.
"""

from importlib import import_module

_WHERE = {"Studio": ".handlers", "StudioSettings": ".settings", "build_app": ".ui", "launch_options": ".ui"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(_WHERE[name], __name__), name)
