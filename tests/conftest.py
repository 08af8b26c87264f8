"""Shared fixtures: a real tiny model with a real trained tokenizer, and real audio batches."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from llamavoice.config import preset
from llamavoice.models.llamavoice import Batch, LlamaVoice
from llamavoice.text.tokenizer import TextTokenizer

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "How much wood would a woodchuck chuck?",
    "She sells sea shells by the sea shore!",
    "Doctor Smith paid three dollars and fifty cents.",
    "In nineteen ninety-nine the forty-second edition appeared.",
    "Peter Piper picked a peck of pickled peppers.",
    "A journey of a thousand miles begins with a single step.",
    "Is this the real life, or is it just fantasy?",
]


@pytest.fixture(scope="session")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(SENTENCES * 4, vocab_size=300)


def make_model(tokenizer: TextTokenizer, seed: int = 0, **lm_overrides) -> LlamaVoice:
    torch.manual_seed(seed)
    cfg = preset("tiny")
    for key, value in lm_overrides.items():
        setattr(cfg.lm, key, value)
    return LlamaVoice(cfg, tokenizer)


def perturb_offset_bias(model: LlamaVoice) -> None:
    """The alignment block's offset bias starts at zero; make it matter, so that tests comparing
    decoding paths also check that every path gives each query its right output step."""
    alignment = model.lm.alignment
    if alignment is not None and alignment.offset_bias is not None:
        with torch.no_grad():
            alignment.offset_bias.copy_(torch.linspace(-2.0, 2.0, alignment.offset_bias.numel()).view_as(
                alignment.offset_bias))


@pytest.fixture()
def tiny_model(tokenizer: TextTokenizer) -> LlamaVoice:
    return make_model(tokenizer)


def synth_audio(seconds: float, sample_rate: int, seed: int) -> np.ndarray:
    """A voiced-speech-like signal: a few harmonics with a wobbling pitch plus a little noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = rng.uniform(90, 220) * (1 + 0.05 * np.sin(2 * np.pi * rng.uniform(2, 5) * t))
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(np.sin(k * phase) / k for k in range(1, 6))
    wave = wave * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(1, 3) * t) ** 2)
    return (0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(len(t))).astype(np.float32)


def make_batch(model: LlamaVoice, seconds: list[float], seed: int = 0) -> Batch:
    sr = model.sample_rate
    texts = [SENTENCES[i % len(SENTENCES)] for i in range(len(seconds))]
    ids = [model.tokenizer.encode(t) for t in texts]
    audio = [synth_audio(s, sr, seed + i) for i, s in enumerate(seconds)]
    prompts = [synth_audio(s * 0.7 + 0.3, sr, seed + 100 + i) for i, s in enumerate(seconds)]

    def pad(arrays, dtype):
        out = torch.zeros(len(arrays), max(len(a) for a in arrays), dtype=dtype)
        for i, a in enumerate(arrays):
            out[i, : len(a)] = torch.as_tensor(np.asarray(a), dtype=dtype)
        return out, torch.tensor([len(a) for a in arrays])

    text, text_lengths = pad(ids, torch.long)
    wav, wav_lengths = pad(audio, torch.float32)
    prompt, prompt_lengths = pad(prompts, torch.float32)
    return Batch(text, text_lengths, wav, wav_lengths, prompt, prompt_lengths)


def train_briefly(model: LlamaVoice, steps: int = 15, seed: int = 0) -> LlamaVoice:
    """A few LM steps on a tiny batch: the weights stop being random, the audio stays noise."""
    batch = make_batch(model, [0.6, 0.9, 0.7], seed=seed)
    model.train()
    params = list(model.flow.parameters()) + list(model.lm.parameters())
    opt = torch.optim.AdamW(params, lr=3e-3)
    torch.manual_seed(seed)
    for _ in range(steps):
        loss = model.lm_losses(batch)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="session")
def trained_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: TextTokenizer) -> Path:
    """A tiny model trained a few steps, saved with save_pretrained plus a default voice
    (voices/default.safetensors), as a model directory that CLI tests can pass to --model."""
    from llamavoice.inference.api import TTS

    with single_thread():
        model = train_briefly(make_model(tokenizer))
        path = model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")
        sr = model.sample_rate
        tts = TTS(LlamaVoice.from_pretrained(path), model_dir=path, device="cpu")
        voice = tts.encode_voice(synth_audio(4.0, sr, seed=7), sample_rate=sr, name="default")
        voice.save(path / "voices" / "default.safetensors")
    return path


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Tiny models are all overhead: on a busy 2-core machine one torch thread avoids OpenMP
    hand-offs that make each small op ~10x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def write_clip(path: Path, seconds: float, sample_rate: int = 24000, channels: int = 1, seed: int = 0) -> Path:
    """A speech-like clip written as a real audio file (format from the extension)."""
    import soundfile as sf

    mono = synth_audio(seconds, sample_rate, seed)
    data = np.stack([mono * (0.8 + 0.2 * c) for c in range(channels)], axis=1) if channels > 1 else mono
    sf.write(str(path), data, sample_rate)
    return path


def write_corpus(folder: Path, speakers: int = 3, per_speaker: int = 3, bad: bool = False) -> Path:
    """Real WAV files of synthetic voiced audio (0.5–0.9 s) and a manifest. ``bad``: float WAVs
    with absurd sample values (finite, so they load) whose spectrogram overflows to inf."""
    import soundfile as sf

    from llamavoice.audio import save_audio
    from llamavoice.data.manifest import ManifestEntry, write_manifest

    sr = 24000
    entries = []
    for s in range(speakers):
        for u in range(per_speaker):
            seconds = 0.5 + 0.2 * ((s + u) % 3)
            wav = synth_audio(seconds, sr, seed=100 * s + u)
            path = folder / "wavs" / f"s{s}_{u}.wav"
            if bad:
                path.parent.mkdir(parents=True, exist_ok=True)
                sf.write(path, wav / np.abs(wav).max() * 3e38, sr, subtype="FLOAT")
            else:
                save_audio(path, wav, sr)
            text = SENTENCES[(s * per_speaker + u) % len(SENTENCES)]
            entries.append(ManifestEntry(str(path), text, f"spk{s}", len(wav) / sr, sr))
    return write_manifest(folder / "manifest.jsonl", entries)


# --- a real server on loopback (tests/test_server*.py) ----------------------------------------------


@contextlib.contextmanager
def serve_app(app) -> Iterator[str]:  # noqa: ANN001
    """Run a FastAPI app with uvicorn in a thread on a free loopback port; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="session")
def server_tts(trained_model_dir: Path):
    """The TTS every server test shares (the tiny trained model, one torch thread). fp32: the tests compare
    batched with lone requests, and a reduced precision's rounding magnifies the tiny differences batch
    shapes make (test_runtime.py bounds the reduced precisions themselves)."""
    from llamavoice.inference.api import load

    return load(trained_model_dir, device="cpu", dtype="fp32", threads=None)


@pytest.fixture(scope="session")
def live_server(server_tts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One server for the server tests: batching on, a fresh voice library, no API key."""
    from llamavoice.server.app import ServerSettings, create_app

    settings = ServerSettings(voices_dir=tmp_path_factory.mktemp("library"), threads=1, max_upload_bytes=2_000_000,
                              max_clip_seconds=30.0)
    with serve_app(create_app(server_tts, settings)) as url:
        yield url


def run_cli(args: list, monkeypatch, capsys, stdin: str | None = None) -> tuple[int, str, str]:
    """``llamavoice ARGS`` in-process, through the real entry point and its error handling."""
    import io
    import sys

    from llamavoice.cli import main

    monkeypatch.setattr(sys, "argv", ["llamavoice", *map(str, args)])
    if stdin is not None:
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
