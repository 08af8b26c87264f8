"""Inference: sampling, the KV-cached generation loop, streaming decode, voices and the TTS API.

Public entry points are re-exported lazily from :mod:`llamavoice` (``synthesize``, ``load``,
``Voice``); the modules here import torch, so nothing is imported eagerly.
"""
