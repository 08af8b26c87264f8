"""LlamaVoice: continuous-latent text-to-speech.

A jointly trained VAE (encoder → continuous latent → Vocos decoder) and a normalizing flow shape
the latent space; a Llama decoder predicts that latent frame by frame through a Gaussian head and
a stop classifier.
"""

import warnings

from llamavoice.version import FORMAT_VERSION, __version__

# vocos imports encodec, which calls torch.jit.script at import time; the deprecation warning
# is about their code, not ours, and would otherwise greet every CLI run.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*is deprecated")

__all__ = ["__version__", "FORMAT_VERSION"]
