"""The speech server over real HTTP on loopback (uvicorn in a thread, the tiny trained model):
every endpoint, every format decoded back with its duration checked, the voice library, and the
status + JSON message of every kind of bad request."""

from __future__ import annotations

import base64
import io
import json
import sys

import av
import numpy as np
import pytest
import requests
import soundfile as sf
from conftest import SENTENCES, serve_app, single_thread, synth_audio

from llamavoice.server.app import ServerSettings, create_app
from llamavoice.server.library import VoiceLibrary

TEXT = SENTENCES[0]
SR = 24000


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


def speech(url: str, **body) -> requests.Response:
    body.setdefault("input", TEXT)
    return requests.post(f"{url}/v1/audio/speech", json=body, timeout=60)


def decode(data: bytes, fmt: str) -> tuple[np.ndarray, int]:
    """Decode a response body with an independent reader (numpy for pcm, FFmpeg via PyAV else)."""
    if fmt == "pcm":
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767, SR
    with av.open(io.BytesIO(data)) as container:
        frames = [f.to_ndarray() for f in container.decode(audio=0)]
        rate = container.streams.audio[0].rate
    audio = np.concatenate([f.reshape(f.shape[0], -1).mean(axis=0) for f in frames])  # planar or packed mono
    scale = np.iinfo(frames[0].dtype).max if np.issubdtype(frames[0].dtype, np.integer) else 1.0
    return (audio / scale).astype(np.float32), rate


def wav_bytes(seconds: float, rate: int = 16000, seed: int = 3) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, synth_audio(seconds, rate, seed), rate, format="WAV")
    return buf.getvalue()


def assert_error(resp: requests.Response, status: int, *words: str, param: str | None = None) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    for word in words:
        assert word in error["message"], error["message"]
    if param is not None:
        assert error["param"] == param


# --- endpoints ------------------------------------------------------------------------------------


def test_health_models_and_page(live_server):
    health = requests.get(f"{live_server}/health").json()
    assert health["status"] == "ok" and health["batching"] is True and health["sample_rate"] == SR
    models = requests.get(f"{live_server}/v1/models").json()
    assert [m["id"] for m in models["data"]][:3] == ["llamavoice", "tts-1", "tts-1-hd"]
    assert requests.get(f"{live_server}/v1/models/tts-1").json()["id"] == "tts-1"
    assert_error(requests.get(f"{live_server}/v1/models/whisper-1"), 404, "whisper-1", param="model")
    page = requests.get(f"{live_server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'id="speak"' in page.text
    assert requests.get(f"{live_server}/static/app.js").status_code == 200


def test_every_format_decodes_to_the_same_audio_length(live_server):
    ref = speech(live_server, response_format="pcm", seed=3)
    assert ref.status_code == 200 and ref.headers["content-type"] == "audio/pcm"
    pcm, _ = decode(ref.content, "pcm")
    seconds = pcm.shape[0] / SR
    assert seconds > 0.3 and np.abs(pcm).max() > 0
    # Lossy codecs add their encoder delay and pad the last frame: up to ~0.1 s at 24 kHz.
    slack = {"wav": 0.0, "flac": 0.0, "mp3": 0.12, "aac": 0.12, "opus": 0.03}
    for fmt, tolerance in slack.items():
        resp = speech(live_server, response_format=fmt, seed=3)
        assert resp.status_code == 200, resp.text
        audio, rate = decode(resp.content, fmt)
        assert rate == (48000 if fmt == "opus" else SR)  # Ogg Opus always decodes at 48 kHz
        assert abs(audio.shape[0] / rate - seconds) <= tolerance + 1e-9, (fmt, audio.shape[0] / rate, seconds)
        if fmt in ("wav", "flac"):
            np.testing.assert_allclose(audio, pcm, atol=2 / 32767)  # lossless: the same samples
        else:
            assert np.abs(audio).max() > 0.01
    wav, rate = sf.read(io.BytesIO(speech(live_server, response_format="wav", seed=3).content))
    assert rate == SR and wav.shape[0] == pcm.shape[0]  # soundfile reads the streamed header too


def test_sample_rate_speed_voice_object_and_ignored_instructions(live_server):
    base, _ = decode(speech(live_server, response_format="pcm", seed=5).content, "pcm")
    resampled = speech(live_server, response_format="wav", seed=5, sample_rate=16000)
    audio, rate = sf.read(io.BytesIO(resampled.content))
    assert rate == 16000 and abs(audio.shape[0] / 16000 - base.shape[0] / SR) < 1e-3
    fast, _ = decode(speech(live_server, response_format="pcm", seed=5, speed=2.0).content, "pcm")
    assert abs(fast.shape[0] / base.shape[0] - 0.5) < 0.05  # same frames, stretched: half as long
    same = speech(live_server, response_format="pcm", seed=5, voice={"id": "alloy"}, instructions="Whisper.")
    np.testing.assert_array_equal(decode(same.content, "pcm")[0], base)


def test_sse_events_carry_the_same_audio(live_server):
    plain = speech(live_server, response_format="pcm", seed=9).content
    resp = speech(live_server, response_format="pcm", seed=9, stream_format="sse")
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[len("data: "):]) for line in resp.text.splitlines() if line.startswith("data: ")]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done" and events[-1]["usage"]["input_tokens"] == len(TEXT)
    assert b"".join(base64.b64decode(e["audio"]) for e in events[:-1]) == plain


def test_voice_library_add_use_delete(live_server):
    url = f"{live_server}/v1/audio/voices"
    added = requests.post(url, files={"file": ("me.wav", wav_bytes(5.0))}, data={"name": "Test Voice"})
    assert added.status_code == 201, added.text
    assert added.json()["id"] == "test-voice" and added.json()["seconds"] == 5.0
    listed = requests.get(url).json()["voices"]
    assert {"id": "default", "name": "default", "source": "model"} in listed
    assert {"id": "test-voice", "name": "Test Voice", "source": "library"} in listed
    mine = speech(live_server, voice="test-voice", response_format="pcm", seed=1)
    default = speech(live_server, voice="default", response_format="pcm", seed=1)
    assert mine.status_code == 200 and mine.content != default.content
    assert_error(requests.post(url, files={"file": ("me.wav", wav_bytes(5.0))}, data={"name": "test voice"}),
                 409, "already exists", param="name")
    assert_error(requests.delete(f"{url}/default"), 403, "ships with the model")
    assert requests.delete(f"{url}/test-voice").json() == {"id": "test-voice", "object": "voice", "deleted": True}
    assert_error(requests.delete(f"{url}/test-voice"), 404, "not in the voice library")
    assert_error(speech(live_server, voice="test-voice"), 400, "test-voice", "not found", param="voice")


def test_upload_a_browser_recording(live_server):
    """MediaRecorder sends WebM/Opus, which soundfile cannot read: PyAV decodes it."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format="webm") as out:
        stream = out.add_stream("libopus", rate=48000, layout="mono")
        clip = synth_audio(4.0, 48000, seed=11)
        frame = av.AudioFrame.from_ndarray(clip[None], format="flt", layout="mono")
        frame.sample_rate = 48000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    resp = requests.post(f"{live_server}/v1/audio/voices", files={"file": ("recording.webm", buf.getvalue())},
                         data={"name": "recorded"})
    assert resp.status_code == 201, resp.text
    assert abs(resp.json()["seconds"] - 4.0) < 0.1
    assert requests.delete(f"{live_server}/v1/audio/voices/recorded").status_code == 200


# --- bad requests -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "words", "param"),
    [
        ({"input": ""}, 400, ["input is empty"], "input"),
        ({"input": "   "}, 400, ["input is empty"], "input"),
        ({"input": "hello", "voice": "nobody"}, 400, ["'nobody' not found", "default"], "voice"),
        ({"input": "hello", "response_format": "ogg"}, 400, ["unknown response_format 'ogg'", "mp3"],
         "response_format"),
        ({"input": "word " * 2000}, 413, ["10000 characters", "limit is 4096"], "input"),
        ({"voice": "alloy"}, 400, ["input", "required"], "input"),
        ({"input": "hello", "model": "whisper-1"}, 404, ["'whisper-1' does not exist"], "model"),
        ({"input": "hello", "speed": 9}, 400, ["speed 9"], "speed"),
        ({"input": "hello", "stream_format": "chunks"}, 400, ["stream_format"], "stream_format"),
        ({"input": "hello", "response_format": "opus", "sample_rate": 22050}, 400, ["opus cannot", "24000"],
         "sample_rate"),
        ({"input": "hello", "temperature": -1}, 400, ["temperature=-1"], None),
        ({"input": "hello", "seed": -3}, 400, ["seed"], "seed"),
        ({"input": "🙂 🙂 ..."}, 400, ["no speakable words"], "input"),
    ],
)
def test_bad_speech_requests(live_server, body, status, words, param):
    assert_error(requests.post(f"{live_server}/v1/audio/speech", json=body), status, *words, param=param)


def test_bad_json_and_unknown_route(live_server):
    resp = requests.post(f"{live_server}/v1/audio/speech", data=b"{not json", headers={"Content-Type":
                                                                                         "application/json"})
    assert_error(resp, 400, "not valid JSON")
    assert_error(requests.get(f"{live_server}/v1/nothing"), 404, "Not Found")


def test_bad_uploads(live_server):
    url = f"{live_server}/v1/audio/voices"
    assert_error(requests.post(url, files={"file": ("x.wav", b"RIFF garbage" * 50)}, data={"name": "x"}), 400,
                 "could not decode 'x.wav'", param="file")
    assert_error(requests.post(url, files={"file": ("big.wav", b"\0" * 2_200_000)}, data={"name": "big"}), 413,
                 "limit is 2 MiB", param="file")
    assert_error(requests.post(url, files={"file": ("long.wav", wav_bytes(31.0, rate=8000))}, data={"name": "l"}),
                 413, "31.0 s long", param="file")
    assert_error(requests.post(url, files={"file": ("short.wav", wav_bytes(1.0))}, data={"name": "s"}), 400,
                 "too short")
    assert_error(requests.post(url, data={"name": "nofile"}), 400, "'file'", param="file")
    assert_error(requests.post(url, files={"file": ("a.wav", wav_bytes(4.0))}, data={"name": "alloy"}), 409,
                 "built-in voice")
    assert [v["id"] for v in requests.get(url).json()["voices"]] == ["default"]


def test_api_key_and_request_limit(server_tts, tmp_path):
    settings = ServerSettings(voices_dir=tmp_path, api_key="s3cret", max_requests=1, threads=1)
    with serve_app(create_app(server_tts, settings)) as url:
        assert_error(requests.get(f"{url}/v1/models"), 401, "API key")
        assert_error(requests.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "API key")
        assert_error(speech(url), 401, "API key")
        key = {"Authorization": "Bearer s3cret"}
        assert requests.get(f"{url}/v1/models", headers=key).status_code == 200
        assert requests.get(f"{url}/health").json()["auth"] is True  # health and the page stay open
        # One request in flight (held open, unread) and the limit is 1: the next is told to retry.
        long_text = " ".join(SENTENCES * 6)
        with requests.post(f"{url}/v1/audio/speech", json={"input": long_text, "response_format": "pcm"},
                           headers=key, stream=True) as held:
            assert held.status_code == 200
            assert_error(requests.post(f"{url}/v1/audio/speech", json={"input": "hi"}, headers=key), 429, "busy")


def test_cors_origin(server_tts, tmp_path):
    settings = ServerSettings(voices_dir=tmp_path, cors_origins=["http://app.example"], threads=1)
    with serve_app(create_app(server_tts, settings)) as url:
        preflight = requests.options(f"{url}/v1/audio/speech", headers={
            "Origin": "http://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://app.example"
        other = requests.get(f"{url}/v1/models", headers={"Origin": "http://elsewhere.example"})
        assert "access-control-allow-origin" not in other.headers


def test_cli_lists_the_library(tmp_path, monkeypatch, capsys, trained_model_dir):
    from llamavoice.cli import main

    monkeypatch.setenv("LLAMAVOICE_HOME", str(tmp_path))
    VoiceLibrary().add("Ann B", synth_audio(4.0, 16000, 1), 16000, source="ann.wav")
    assert (tmp_path / "voices" / "ann-b" / "clip.flac").is_file()
    monkeypatch.setattr(sys, "argv", ["llamavoice", "voices", "--json", "--model", str(trained_model_dir)])
    with pytest.raises(SystemExit) as done:
        main()
    assert done.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["library"] == str(tmp_path / "voices")
    assert out["voices"] == [{"id": "default", "name": "default", "source": "model"},
                             {"id": "ann-b", "name": "Ann B", "source": "library", "seconds": 4.0}]
    monkeypatch.setattr(sys, "argv", ["llamavoice", "voices", "--model", str(trained_model_dir)])
    with pytest.raises(SystemExit):
        main()
    assert "ann-b" in capsys.readouterr().out
