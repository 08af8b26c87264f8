"""The official `openai` Python client against the live server on loopback: what apps that speak
OpenAI's audio API actually send and read."""

from __future__ import annotations

import io

import numpy as np
import openai
import pytest
import soundfile as sf
from conftest import SENTENCES, single_thread

TEXT = SENTENCES[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def client(live_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server}/v1", api_key="not-needed", max_retries=0, timeout=60)


def test_speech_create_returns_a_playable_file(client):
    response = client.audio.speech.create(model="tts-1", voice="alloy", input=TEXT, response_format="wav",
                                          extra_body={"seed": 7})
    audio, rate = sf.read(io.BytesIO(response.content))
    assert rate == 24000 and audio.shape[0] / rate > 0.3 and np.abs(audio).max() > 0
    again = client.audio.speech.create(model="tts-1-hd", voice="alloy", input=TEXT, response_format="wav",
                                       extra_body={"seed": 7})
    assert again.content == response.content  # a seed (our extra, through extra_body) repeats


def test_streaming_response_arrives_in_pieces_and_equals_the_whole(client, tmp_path):
    whole = client.audio.speech.create(model="llamavoice", voice="default", input=" ".join(SENTENCES[:3]),
                                       response_format="pcm", extra_body={"seed": 2}).content
    with client.audio.speech.with_streaming_response.create(
        model="llamavoice", voice="default", input=" ".join(SENTENCES[:3]), response_format="pcm",
        extra_body={"seed": 2},
    ) as response:
        assert response.headers["content-type"] == "audio/pcm"
        pieces = list(response.iter_bytes(chunk_size=None))
    assert len(pieces) > 1 and b"".join(pieces) == whole
    with client.audio.speech.with_streaming_response.create(model="tts-1", voice="alloy", input=TEXT,
                                                            response_format="mp3") as response:
        response.stream_to_file(tmp_path / "out.mp3")
    assert (tmp_path / "out.mp3").stat().st_size > 1000


def test_errors_raise_the_clients_exceptions(client):
    with pytest.raises(openai.BadRequestError) as bad:
        client.audio.speech.create(model="tts-1", voice="nobody", input=TEXT)
    assert "'nobody' not found" in bad.value.message and bad.value.body["param"] == "voice"
    with pytest.raises(openai.NotFoundError):
        client.audio.speech.create(model="whisper-1", voice="alloy", input=TEXT)
    assert [m.id for m in client.models.list()][:3] == ["llamavoice", "tts-1", "tts-1-hd"]
