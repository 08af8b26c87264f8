"""Errors a user can act on. Each message names the problem and what to do about it.

Front ends (CLI, API) catch ``LlamaVoiceError`` and print its message as one line, so nothing
raised from here should need a traceback to be understood.
"""


class LlamaVoiceError(Exception):
    """Base class for every error LlamaVoice raises on purpose."""


class ConfigError(LlamaVoiceError):
    """A config file or preset is missing, malformed or inconsistent."""


class AudioError(LlamaVoiceError):
    """An audio file is missing, unreadable, empty, silent or otherwise unusable."""


class TextError(LlamaVoiceError):
    """Text is empty, too long, or cannot be tokenized."""


class CheckpointError(LlamaVoiceError):
    """A model directory is missing, corrupt, or from an incompatible version."""


class TokenizerError(LlamaVoiceError):
    """A tokenizer file is missing, corrupt, or from an incompatible version."""


class InferenceMemoryError(LlamaVoiceError):
    """The device ran out of memory during synthesis."""
