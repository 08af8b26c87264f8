"""Audio file I/O, level/silence utilities and log-mel features."""

from llamavoice.audio.features import LogMelSpectrogram
from llamavoice.audio.io import (
    SILENCE_DBFS,
    active_rms_dbfs,
    clipping_ratio,
    is_silent,
    load_audio,
    load_prompt_audio,
    normalize_loudness,
    prepare_prompt_array,
    resample,
    rms_dbfs,
    save_audio,
    supported_formats,
    trim_silence,
)

__all__ = [
    "SILENCE_DBFS",
    "LogMelSpectrogram",
    "active_rms_dbfs",
    "clipping_ratio",
    "is_silent",
    "load_audio",
    "load_prompt_audio",
    "normalize_loudness",
    "prepare_prompt_array",
    "resample",
    "rms_dbfs",
    "save_audio",
    "supported_formats",
    "trim_silence",
]
