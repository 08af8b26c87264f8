"""Streaming pieces of the server: the streaming resampler equals the one-shot one, and every
streaming encoder's output decodes back to the audio's length."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from conftest import synth_audio

from llamavoice.audio import resample
from llamavoice.audio.io import StreamingResampler
from llamavoice.errors import ConfigError
from llamavoice.server.formats import FORMATS, check_format, make_encoder


@pytest.mark.parametrize("target", [8000, 16000, 22050, 44100, 48000, 24000])
def test_streaming_resampler_equals_one_shot(target):
    x = synth_audio(1.3, 24000, seed=1)
    whole = resample(x, 24000, target)
    stream = StreamingResampler(24000, target)
    pieces, i = [], 0
    for n in (3840, 1, 7, 960, 15360, 100, 10**6):  # decoder-sized chunks, and awkward ones
        pieces.append(stream.push(x[i : i + n]))
        i += n
    pieces.append(stream.finish())
    got = np.concatenate(pieces)
    assert got.shape == whole.shape
    assert np.abs(got - whole).max() < 1e-5


def test_streaming_resampler_short_input():
    x = synth_audio(0.004, 24000, seed=2)  # shorter than the filter
    stream = StreamingResampler(24000, 22050)
    got = np.concatenate([stream.push(x), stream.finish()])
    np.testing.assert_allclose(got, resample(x, 24000, 22050), atol=1e-5)


def decoded_seconds(data: bytes) -> float:
    with av.open(io.BytesIO(data)) as container:
        samples = sum(frame.samples for frame in container.decode(audio=0))
        return samples / container.streams.audio[0].rate


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("rate", [24000, 16000])
def test_encoders_stream_decodable_audio(fmt, rate):
    audio = synth_audio(1.5, rate, seed=3)
    encoder = make_encoder(fmt, rate)
    chunks = [encoder.push(audio[i : i + 3840]) for i in range(0, audio.shape[0], 3840)]
    chunks.append(encoder.finish())
    data = b"".join(chunks)
    assert sum(1 for c in chunks[:-1] if c) >= 2  # bytes leave the encoder while audio comes in
    if fmt == "pcm":
        assert len(data) == 2 * audio.shape[0]
        return
    assert abs(decoded_seconds(data) - 1.5) <= (0.0 if fmt in ("wav", "flac") else 0.12)


def test_format_checks_name_the_fix():
    with pytest.raises(ConfigError, match="unknown response_format 'ogg'; choose one of mp3"):
        check_format("ogg", 24000)
    with pytest.raises(ConfigError, match="opus cannot be encoded at 44100 Hz.*48000"):
        check_format("opus", 44100)
    with pytest.raises(ConfigError, match="out of range"):
        check_format("wav", 96000)
