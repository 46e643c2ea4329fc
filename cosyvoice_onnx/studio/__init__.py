"""The Gradio studio: `Studio` holds engines, voices and history; `build_app` lays out the page."""

from .handlers import Studio
from .settings import StudioSettings
from .ui import build_app, launch_options

__all__ = ["Studio", "StudioSettings", "build_app", "launch_options"]
