"""LlamaVoice: continuous-latent text-to-speech.

A jointly trained VAE (encoder → continuous latent → Vocos decoder) and a normalizing flow shape
the latent space; a Llama decoder predicts that latent frame by frame through a Gaussian head and
a stop classifier.
"""

from llamavoice.version import FORMAT_VERSION, __version__

__all__ = ["__version__", "FORMAT_VERSION"]
