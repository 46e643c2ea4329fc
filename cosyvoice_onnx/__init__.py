"""CosyVoice ONNX Studio: Fun-CosyVoice3 voice cloning on PyTorch and ONNX Runtime.

Three calls cover most uses::

    from cosyvoice_onnx import CosyVoice, save_wav
    tts = CosyVoice("Fun-CosyVoice3-0.5B-2512")               # or backend="onnx"
    audio = tts.synthesize("Hello!", prompt_wav="me.wav", prompt_text="transcript of me.wav")
    save_wav("out.wav", audio, tts.sample_rate)
"""

from .audio import write_wav as save_wav
from .engine import CosyVoice
from .errors import CosyVoiceError, ExportError, InputError, ModelFolderError
from .frontend import PromptFeatures

__all__ = ["CosyVoice", "PromptFeatures", "save_wav", "CosyVoiceError", "InputError", "ModelFolderError",
           "ExportError"]
__version__ = "0.1.0"
