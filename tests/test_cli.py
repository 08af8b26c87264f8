"""Command line: `llamavoice synthesize/speak/encode/generate/decode/interactive` and
`python generate_voice.py`, on a tiny model trained a few steps (fixture ``trained_model_dir``).

Commands run in-process through ``llamavoice.cli.main`` (the real entry point, with its error
handling); one test runs ``generate_voice.py`` as a real subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import run_cli as run
from conftest import single_thread, write_clip

import llamavoice
from llamavoice.inference import api

ROOT = Path(__file__).resolve().parent.parent
TEXT = "The quick brown fox jumps over the lazy dog."
LSB = 1.5 / 32767  # 16-bit WAV quantization


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    # 44.1 kHz stereo: the CLI must handle any rate and channel count.
    return write_clip(tmp_path_factory.mktemp("cli") / "ref.wav", 4.0, sample_rate=44100, channels=2, seed=5)


@pytest.fixture(scope="module")
def tts(trained_model_dir):
    return llamavoice.load(trained_model_dir, device="cpu")




def read_wav(path: Path) -> tuple[np.ndarray, int]:
    info = sf.info(str(path))
    assert info.format == "WAV" and info.channels == 1
    audio, sr = sf.read(str(path), dtype="float32")
    return audio, sr


def test_synthesize_command_matches_api(trained_model_dir, tts, clip, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out.wav"
    code, _, err = run(["synthesize", "--text", TEXT, "--voice", clip, "-o", out, "--model", trained_model_dir,
                        "--seed", 1, "--device", "cpu", "--threads", 1], monkeypatch, capsys)
    assert code == 0, err
    assert "wrote" in err and "RTF" in err
    audio, sr = read_wav(out)
    expected, _ = tts.synthesize(TEXT, voice=clip, seed=1)
    assert sr == tts.sample_rate and audio.shape == expected.shape
    assert np.abs(audio - np.clip(expected, -1, 1)).max() <= LSB
    # Plausible length: between the text's min and max, in whole latent frames.
    lo, hi = tts.sampling.frame_limits(len(TEXT), tts.frame_rate)
    assert lo * tts.samples_per_frame <= audio.shape[0] <= hi * tts.samples_per_frame


def test_generate_voice_script(trained_model_dir, tmp_path):
    out = tmp_path / "gv.wav"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(ROOT / "generate_voice.py"), "--input_text", "Hello there. How are you?",
           "--model", str(trained_model_dir), "--output", str(out), "--seed", "2", "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    audio, sr = read_wav(out)
    assert audio.shape[0] > 0.2 * sr and np.abs(audio).max() > 0
    # A usage mistake is one line and a non-zero exit, not a traceback.
    proc = subprocess.run(cmd + ["--temprature", "0.5"], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=120)
    assert proc.returncode == 2 and "No such option" in proc.stderr and "Traceback" not in proc.stderr


def test_speak_positional_and_stream(trained_model_dir, clip, tmp_path, monkeypatch, capsys):
    plain, streamed = tmp_path / "plain.wav", tmp_path / "streamed.wav"
    code, _, err = run(["speak", TEXT, clip, plain, "--model", trained_model_dir, "--seed", 3, "--device", "cpu"],
                       monkeypatch, capsys)
    assert code == 0, err
    code, _, err = run(["synthesize", "-t", TEXT, "-v", clip, "-o", streamed, "-m", trained_model_dir, "--seed", 3,
                        "--stream", "--chunk-frames", 2, "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    assert "first audio after" in err
    a, _ = read_wav(plain)
    b, _ = read_wav(streamed)
    assert a.shape == b.shape and np.abs(a - b).max() <= LSB


def test_text_file_num_samples_and_sampling_flags(trained_model_dir, tmp_path, monkeypatch, capsys):
    text_file = tmp_path / "story.txt"
    text_file.write_text("Once upon a time, there was a fox.\n\nIt ran home。Then it slept！The end.", encoding="utf-8")
    out = tmp_path / "story.wav"
    args = ["synthesize", "--text-file", text_file, "-o", out, "-m", trained_model_dir, "--seed", 4,
            "--num-samples", 2, "--temperature", 0.5, "--min-temperature", 0.2, "--cfg-weight", 1.0,
            "--speed", 1.2, "--device", "cpu", "--no-progress"]
    code, _, err = run(args, monkeypatch, capsys)
    assert code == 0, err
    first, _ = read_wav(out)
    code, _, err = run(args, monkeypatch, capsys)
    assert code == 0, err
    again, _ = read_wav(out)
    np.testing.assert_array_equal(first, again)  # --seed: identical files


def test_three_step_pipeline(trained_model_dir, tts, clip, tmp_path, monkeypatch, capsys):
    voice, latents, out = tmp_path / "voice.pt", tmp_path / "latents.npy", tmp_path / "decoded.wav"
    model = ["--model", trained_model_dir, "--device", "cpu"]
    code, _, err = run(["encode", clip, "-o", voice, *model], monkeypatch, capsys)
    assert code == 0, err
    assert voice.read_bytes()[8:9] == b"{"  # safetensors despite the .pt name
    code, _, err = run(["generate", "--text", TEXT, "--voice", voice, "-o", latents, "--seed", 6, *model],
                       monkeypatch, capsys)
    assert code == 0, err
    z = np.load(latents, allow_pickle=False)
    assert z.ndim == 2 and z.shape[1] == tts.model.config.vae.latent_dim and z.shape[0] > 0
    code, _, err = run(["decode", latents, "-o", out, *model], monkeypatch, capsys)
    assert code == 0, err
    audio, _ = read_wav(out)
    assert audio.shape[0] == z.shape[0] * tts.samples_per_frame
    # One sentence: the three steps give what one synthesize call gives.
    expected, _ = tts.synthesize(TEXT, voice=str(voice), seed=6)
    assert np.abs(audio - np.clip(expected, -1, 1)).max() <= LSB


def test_interactive(trained_model_dir, tmp_path, monkeypatch, capsys):
    outdir = tmp_path / "inter"
    lines = "Hello there.\n\n😀😀\nHow are you?\nexit\nnever spoken\n"
    code, out, err = run(["interactive", "--model", trained_model_dir, "--output-dir", outdir, "--seed", 1,
                          "--device", "cpu"], monkeypatch, capsys, stdin=lines)
    assert code == 0, err
    assert sorted(p.name for p in outdir.iterdir()) == ["001.wav", "002.wav"]
    assert "no speakable words" in err  # the emoji line is reported, the session goes on
    assert out.count("saved") == 2


def _broken_model(trained_model_dir: Path, tmp_path: Path) -> Path:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained_model_dir, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    return broken


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing_model", "model directory not found"),
        ("default_not_installed", "default model is not installed"),
        ("corrupt_checkpoint", "corrupt"),
        ("unreadable_clip", "not a readable audio file"),
        ("short_clip", "too short"),
        ("empty_text", "empty"),
        ("no_text", "no text given"),
        ("missing_text_file", "text file not found"),
        ("unsupported_device", "no CUDA GPU"),
        ("unknown_device", "unknown device"),
        ("beyond_memory", "max_seconds_per_char"),
        ("bad_latents", "not a .npy array"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(case, expected, trained_model_dir, tmp_path, monkeypatch, capsys):
    model = ["--model", trained_model_dir]
    out = ["-o", tmp_path / "x.wav"]
    short = write_clip(tmp_path / "short.wav", 1.0)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"RIFF but not really a wav file at all")
    args = {
        "missing_model": ["synthesize", "--text", TEXT, "--model", tmp_path / "nope", *out],
        "default_not_installed": ["synthesize", "--text", TEXT, *out],
        "corrupt_checkpoint": ["synthesize", "--text", TEXT, "--model", _broken_model(trained_model_dir, tmp_path),
                               *out],
        "unreadable_clip": ["synthesize", "--text", TEXT, "--voice", junk, *model, *out],
        "short_clip": ["encode", short, "-o", tmp_path / "v.pt", *model],
        "empty_text": ["synthesize", "--text", "  ", *model, *out],
        "no_text": ["synthesize", *model, *out],
        "missing_text_file": ["synthesize", "--text-file", tmp_path / "none.txt", *model, *out],
        "unsupported_device": ["synthesize", "--text", TEXT, "--device", "cuda", *model, *out],
        "unknown_device": ["synthesize", "--text", TEXT, "--device", "banana", *model, *out],
        "beyond_memory": ["synthesize", "--text", TEXT, "--max-seconds-per-char", "1e12", *model, *out],
        "bad_latents": ["decode", junk, *model, *out],
    }[case]
    if case == "unsupported_device":
        import torch

        if torch.cuda.is_available():
            pytest.skip("a CUDA GPU is present here")
    if case == "default_not_installed":
        monkeypatch.setattr(api, "DEFAULT_MODEL_DIR", tmp_path / "not-installed")
    code, _, err = run(args, monkeypatch, capsys)
    assert code != 0
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert expected in lines[0]
    assert not (tmp_path / "x.wav").exists()


def test_help_lists_inference_commands(monkeypatch, capsys):
    code, out, _ = run(["--help"], monkeypatch, capsys)
    assert code == 0
    for name in ("synthesize", "speak", "encode", "generate", "decode", "interactive"):
        assert name in out
