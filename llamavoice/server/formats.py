"""Streaming audio encoders for the speech endpoint: push float32 chunks, get bytes as they are ready.

- ``pcm``: raw 16-bit little-endian mono samples (OpenAI's pcm is this at 24 kHz).
- ``wav``: the same samples behind a 44-byte header whose sizes say "unknown" (0xFFFFFFFF), as
  OpenAI streams it; soundfile/libsndfile and FFmpeg read such files to their end. soundfile
  itself cannot write here: it needs a seekable file to patch the sizes afterwards.
- ``mp3``, ``aac`` (ADTS), ``opus`` (Ogg) and ``flac``: PyAV (FFmpeg's libraries, linked into the
  ``av`` wheel; no ffmpeg binary) muxing into a write-only sink that is drained after every chunk.
  soundfile cannot write AAC at all, nor any format to a stream that cannot seek.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from llamavoice.errors import ConfigError

FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
MIN_RATE, MAX_RATE = 8000, 48000
MEDIA_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


@dataclass(frozen=True)
class _AvSpec:
    container: str
    codec: str
    bit_rate: int | None
    options: tuple[tuple[str, str], ...] = ()


_AV = {
    "mp3": _AvSpec("mp3", "libmp3lame", 64_000),
    "aac": _AvSpec("adts", "aac", 64_000),
    # Ogg pages hold 1 s by default: flush every 100 ms so audio reaches the client as it is made.
    "opus": _AvSpec("ogg", "libopus", 32_000, (("page_duration", "100000"),)),
    "flac": _AvSpec("flac", "flac", None),
}


class AudioEncoder(Protocol):
    media_type: str

    def push(self, audio: np.ndarray) -> bytes: ...

    def finish(self) -> bytes: ...


def to_int16(audio: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0) * 32767.0).round().astype("<i2")


class PcmEncoder:
    def __init__(self, sample_rate: int, header: bool = False):
        self.media_type = MEDIA_TYPES["wav" if header else "pcm"]
        self._head = wav_stream_header(sample_rate) if header else b""

    def push(self, audio: np.ndarray) -> bytes:
        head, self._head = self._head, b""
        return head + to_int16(audio).tobytes()

    def finish(self) -> bytes:
        head, self._head = self._head, b""
        return head


def wav_stream_header(sample_rate: int) -> bytes:
    """RIFF/WAVE header for 16-bit mono PCM of unknown length."""
    unknown = 0xFFFFFFFF
    fmt = struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16)
    return b"RIFF" + struct.pack("<I", unknown) + b"WAVE" + b"fmt " + fmt + b"data" + struct.pack("<I", unknown)


class _Sink:
    """A write-only file for PyAV: it collects what the muxer writes until drained."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out, self.parts = b"".join(self.parts), []
        return out


class AvEncoder:
    def __init__(self, fmt: str, sample_rate: int):
        import av

        spec = _AV[fmt]
        self.media_type = MEDIA_TYPES[fmt]
        self._sink = _Sink()
        self._container = av.open(self._sink, mode="w", format=spec.container, options=dict(spec.options))
        self._stream = self._container.add_stream(spec.codec, rate=sample_rate, layout="mono")
        if spec.bit_rate is not None:
            self._stream.codec_context.bit_rate = spec.bit_rate
        # Codecs take different sample formats and frame sizes; PyAV's resampler (a format
        # converter here: the rate does not change) re-frames the float chunks for the codec.
        target = self._stream.codec_context.codec.audio_formats[0].name
        self._convert = av.AudioResampler(format=target, layout="mono", rate=sample_rate)
        self._rate = sample_rate
        self._av = av

    def _encode(self, frames) -> None:  # noqa: ANN001
        for frame in frames:
            for packet in self._stream.encode(frame):
                self._container.mux(packet)

    def push(self, audio: np.ndarray) -> bytes:
        audio = np.clip(np.asarray(audio, dtype=np.float32), -1.0, 1.0)
        if audio.size:
            frame = self._av.AudioFrame.from_ndarray(audio[None], format="flt", layout="mono")
            frame.sample_rate = self._rate
            self._encode(self._convert.resample(frame))
        return self._sink.drain()

    def finish(self) -> bytes:
        self._encode(self._convert.resample(None))
        for packet in self._stream.encode(None):
            self._container.mux(packet)
        self._container.close()
        return self._sink.drain()


def check_format(fmt: str, sample_rate: int) -> None:
    """Raise ConfigError when ``fmt`` is unknown or cannot carry ``sample_rate``."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown response_format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not MIN_RATE <= sample_rate <= MAX_RATE:
        raise ConfigError(f"sample_rate {sample_rate} is out of range; choose {MIN_RATE}-{MAX_RATE} Hz")
    if fmt in _AV and _AV[fmt].codec != "flac":
        import av

        rates = av.Codec(_AV[fmt].codec, "w").audio_rates
        if rates and sample_rate not in rates:
            raise ConfigError(
                f"{fmt} cannot be encoded at {sample_rate} Hz; choose a sample_rate among "
                f"{', '.join(str(r) for r in sorted(rates))}"
            )


def make_encoder(fmt: str, sample_rate: int) -> AudioEncoder:
    check_format(fmt, sample_rate)
    if fmt in ("pcm", "wav"):
        return PcmEncoder(sample_rate, header=fmt == "wav")
    return AvEncoder(fmt, sample_rate)
