"""LlamaVoice: continuous-latent text-to-speech.

A jointly trained VAE (encoder → continuous latent → Vocos decoder) and a normalizing flow shape
the latent space; a Llama decoder predicts that latent frame by frame through a Gaussian head and
a stop classifier.

    import llamavoice
    audio, sample_rate = llamavoice.synthesize("Hello there.", voice="clip.wav", model="path/to/model")
    tts = llamavoice.load("path/to/model")          # .synthesize, .stream, .synthesize_batch, .encode_voice

The inference API is imported on first use, so ``import llamavoice`` does not load torch.
"""

import warnings
from typing import Any

from llamavoice.version import FORMAT_VERSION, __version__

# vocos imports encodec, which calls torch.jit.script at import time; the deprecation warning
# is about their code, not ours, and would otherwise greet every CLI run.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated")

__all__ = ["__version__", "FORMAT_VERSION", "synthesize", "load", "Voice", "TTS", "SamplingConfig"]

_LAZY = {
    "synthesize": "llamavoice.inference.api",
    "load": "llamavoice.inference.api",
    "TTS": "llamavoice.inference.api",
    "Voice": "llamavoice.inference.voice",
    "SamplingConfig": "llamavoice.inference.sampling",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'llamavoice' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
