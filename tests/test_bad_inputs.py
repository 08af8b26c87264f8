"""Bad and edge inputs through the real CLI and the real Python API (issue #14).

Every refused run must end with exit code 1 and exactly one ``error: ...`` line on stderr that names
the option or file at fault (no traceback), and must leave a file the user already had at the
output path byte for byte as it was. Inputs that have a sensible reading (SSML pauses, a URL, a
folder of earlier takes) must give it.

The model is the tiny one trained a few steps (``trained_model_dir``); most refusals happen before
the model is even loaded, so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli, single_thread, synth_audio, write_clip

import llamavoice
from llamavoice.errors import AudioError, CheckpointError, ConfigError, TextError
from llamavoice.inference.voice import Voice
from llamavoice.text import normalize_text

TEXT = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with single_thread():
        yield


@pytest.fixture(scope="module")
def tts(trained_model_dir):
    return llamavoice.load(trained_model_dir, device="cpu")


@pytest.fixture(scope="module")
def files(tmp_path_factory, trained_model_dir, tts):
    """Real input files: a clip, voice files good and bad, latents good and bad, broken models."""
    root = tmp_path_factory.mktemp("bad")
    sr = tts.sample_rate
    dim = tts.model.config.vae.latent_dim
    f = {"root": root, "model": trained_model_dir}
    f["clip"] = write_clip(root / "ref.wav", 4.0, seed=3)
    f["noise"] = root / "noise.wav"
    sf.write(str(f["noise"]), (0.1 * np.random.default_rng(0).standard_normal(4 * sr)).astype(np.float32), sr)
    for name, latents in {
        "nan.voice": torch.full((50, dim), float("nan")),
        "empty.voice": torch.zeros(0, dim),
        "long.voice": torch.randn(20_000, dim),
        "wrongdim.voice": torch.randn(50, dim + 3),
    }.items():
        Voice(latents=latents, name=name).save(root / name)
        f[name] = root / name
    for name, array in {
        "nan.npy": np.full((20, dim), np.nan, np.float32),
        "shape.npy": np.zeros((20, 3), np.float32),
        "complex.npy": np.zeros((20, dim), np.complex64),
    }.items():
        np.save(root / name, array)
        f[name] = root / name
    f["text.wav"] = root / "text.wav"  # a text file whose name looks like audio
    f["text.wav"].write_text(TEXT, encoding="utf-8")
    f["book.txt"] = root / "book.txt"
    f["book.txt"].write_text(TEXT * 2000, encoding="utf-8")  # 88,000 bytes: over what 20,000 characters take

    def broken(name: str, edit) -> Path:  # noqa: ANN001
        path = root / name
        shutil.copytree(trained_model_dir, path)
        edit(path)
        return path

    def set_config(value):  # noqa: ANN001, ANN202
        return lambda p: (p / "config.json").write_text(json.dumps(value(json.loads((p / "config.json").read_text()))))

    def field(section: str, key: str, value):  # noqa: ANN001, ANN202
        def change(meta):  # noqa: ANN001, ANN202
            meta["model"][section][key] = value
            return meta
        return change

    f["config_list"] = broken("config_list", set_config(lambda meta: [meta]))
    f["config_type"] = broken("config_type", set_config(field("vae", "latent_dim", "thirty-two")))
    f["config_negative"] = broken("config_negative", set_config(field("vae", "latent_dim", -5)))
    f["sampling_json"] = broken("sampling_json",
                                lambda p: (p / "sampling.json").write_text(json.dumps({"temperature": "hot"})))
    return f




def one_error_line(err: str) -> str:
    """The refusal is exactly one ``error:`` line (warnings aside) and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _fill(arg: str, names: dict) -> str:
    for key, value in names.items():
        arg = arg.replace("{" + key + "}", str(value))
    return arg


def existing_output(path: Path) -> bytes:
    """Put a real earlier take at ``path``; returns its bytes to compare afterwards."""
    sf.write(str(path), synth_audio(0.5, 24000, seed=9), 24000, subtype="PCM_16")
    return path.read_bytes()


# ------------------------------------------------------------------------------------------------
# CLI refusals: exit code 1, one line naming the problem, the existing output untouched
# ------------------------------------------------------------------------------------------------

LONG_TEXT = "word " * 4001  # 20,005 characters: one more chunk than the default cap allows
BASE = ["synthesize", "--model", "{model}", "--device", "cpu"]
SYN = [*BASE, "-o", "{out}"]
SYN_T = [*SYN, "--text", TEXT]

CLI_REFUSALS = {
    # sampling options: non-finite, out of range, wrong kind (the same rules as the API)
    "speed_inf": ([*SYN_T, "--speed", "inf"], ["speed=inf", "out of range"]),
    "speed_nan": ([*SYN_T, "--speed", "nan"], ["speed=nan"]),
    "speed_zero": ([*SYN_T, "--speed", "0"], ["speed"]),
    "temperature_inf": ([*SYN_T, "--temperature", "inf"], ["temperature=inf"]),
    "temperature_negative": ([*SYN_T, "--temperature", "-1"], ["temperature"]),
    "min_temperature_inf": ([*SYN_T, "--min-temperature", "inf"], ["min_temperature"]),
    "cfg_weight_nan": ([*SYN_T, "--cfg-weight", "nan"], ["cfg_weight=nan"]),
    "cfg_weight_huge": ([*SYN_T, "--cfg-weight", "1e30"], ["cfg_weight"]),
    "stop_threshold_inf": ([*SYN_T, "--stop-threshold", "inf"], ["stop_threshold"]),
    "max_seconds_inf": ([*SYN_T, "--max-seconds", "inf"], ["max_seconds"]),
    "max_seconds_per_char_huge": ([*SYN_T, "--max-seconds-per-char", "1e12"], ["max_seconds_per_char"]),
    "min_seconds_per_char_inf": ([*SYN_T, "--min-seconds-per-char", "inf"], ["min_seconds_per_char"]),
    "best_of_1000": ([*SYN_T, "-n", "1000"], ["num_samples=1000", "capped"]),
    "best_of_0": ([*SYN_T, "-n", "0"], ["num_samples"]),
    "seed_negative": ([*SYN_T, "--seed", "-1"], ["seed"]),
    "max_chars_zero": ([*SYN_T, "--max-chars", "0"], ["max_chars"]),
    "stall_action": ([*SYN_T, "--stall-action", "panic"], ["stall_action"]),
    "batch_size_zero": ([*SYN_T, "--batch-size", "0"], ["--batch-size"]),
    "threads_zero": ([*SYN_T, "--threads", "0"], ["--threads"]),
    "dtype": ([*SYN_T, "--dtype", "fp8"], ["dtype"]),
    # texts
    "text_over_total_cap": ([*SYN, "--text", LONG_TEXT], ["max_total_chars=20,000", "--max-total-chars"]),
    "text_file_over_cap": ([*SYN, "--text-file", "{book.txt}"], ["book.txt", "--max-total-chars"]),
    "total_cap_zero": ([*SYN_T, "--max-total-chars", "0"], ["max_total_chars"]),
    "empty_text": ([*SYN, "--text", "   "], ["empty"]),
    "emoji_only": ([*SYN, "--text", "😀😀 🎉"], ["no speakable words"]),
    "chinese": ([*SYN, "--text", "东京是日本的首都。"], ["script", "CJK"]),
    "arabic": ([*SYN, "--text", "مرحبا بالعالم"], ["script", "Arabic"]),
    "ssml_malformed": ([*SYN, "--text", "<speak>Hello <break time='1s'></speak>"], ["SSML", "well-formed"]),
    "ssml_break_too_long": ([*SYN, "--text", '<speak>Hi <break time="60s"/> there</speak>'], ["break", "10 s"]),
    "ssml_bad_rate": ([*SYN, "--text", '<speak><prosody rate="ludicrous">Hi</prosody></speak>'], ["rate"]),
    "ssml_entity_bomb": ([*SYN, "--text", '<!DOCTYPE s [<!ENTITY a "aaaa">]><speak>&a;&a;</speak>'],
                         ["SSML", "refused"]),
    "ssml_rate_times_speed": ([*SYN, "--speed", "4", "--text", '<prosody rate="x-fast">Hi there.</prosody>'],
                              ["prosody rate"]),
    # streaming: the data loss (the file was truncated before the text was checked)
    "stream_empty_text": ([*SYN, "--stream", "--text", " "], ["empty"]),
    "stream_bad_option": ([*SYN_T, "--stream", "--temperature", "inf"], ["temperature"]),
    "stream_best_of_n": ([*SYN_T, "--stream", "-n", "2"], ["--num-samples", "stream"]),
    "stream_chunk_frames": ([*SYN_T, "--stream", "--chunk-frames", "0"], ["--chunk-frames"]),
    "stdout_needs_stream": (["synthesize", "--model", "{model}", "--text", TEXT, "-o", "-"], ["needs --stream"]),
    # output paths, checked before the model is loaded
    "output_extension": ([*BASE, "--text", TEXT, "-o", "{root}/out.xyz"], ["extension"]),
    "output_no_extension": ([*BASE, "--text", TEXT, "-o", "{root}/out"], ["extension"]),
    "stream_ogg": ([*BASE, "--text", TEXT, "--stream", "-o", "{root}/out.ogg"], [".wav or .flac"]),
    "output_is_folder": (["synthesize", "--model", "{model}", "--text", TEXT, "-o", "{root}"], ["directory"]),
    "output_tree": (["synthesize", "--model", "{model}", "--text", TEXT, "-o", "{root}/a/b/c.wav"],
                    ["does not exist", "a"]),
    "output_in_proc": (["synthesize", "--model", "{model}", "--text", TEXT, "-o", "/proc/x.wav"], ["not writable"]),
    "output_is_voice_clip": (["synthesize", "--model", "{model}", "--text", TEXT, "-v", "{clip}", "-o", "{clip}"],
                             ["same file", "voice clip"]),
    "output_is_text_file": (["synthesize", "--model", "{model}", "--text-file", "{text.wav}", "-o", "{text.wav}"],
                            ["same file", "text file"]),
    "speak_output_is_ref": (["speak", TEXT, "{clip}", "{clip}", "--model", "{model}"], ["same file"]),
    # voices
    "voice_missing": ([*SYN_T, "--voice", "{root}/nope.wav"], ["neither a voice"]),
    "voice_nan": ([*SYN_T, "--voice", "{nan.voice}"], ["nan.voice", "NaN"]),
    "voice_zero_frames": ([*SYN_T, "--voice", "{empty.voice}"], ["empty.voice", "at least one frame"]),
    "voice_20000_frames": ([*SYN_T, "--voice", "{long.voice}"], ["long.voice", "15 s"]),
    "voice_wrong_dim": ([*SYN_T, "--voice", "{wrongdim.voice}"], ["wrongdim.voice", "dimensional"]),
    # models
    "config_json_list": (["synthesize", "--model", "{config_list}", "--text", TEXT, "-o", "{out}"],
                         ["config.json", "list"]),
    "config_json_type": (["synthesize", "--model", "{config_type}", "--text", TEXT, "-o", "{out}"],
                         ["latent_dim", "integer", "thirty-two"]),
    "config_json_negative": (["synthesize", "--model", "{config_negative}", "--text", TEXT, "-o", "{out}"],
                             ["config.json", "cannot be built"]),
    "sampling_json_type": (["synthesize", "--model", "{sampling_json}", "--text", TEXT, "-o", "{out}"],
                           ["sampling.json", "temperature"]),
    # the three-step pipeline
    "encode_to_proc": (["encode", "{clip}", "-o", "/proc/x.voice", "--model", "{model}"], ["/proc", "not writable"]),
    "encode_over_clip": (["encode", "{clip}", "-o", "{clip}", "--model", "{model}"], ["same file"]),
    "encode_missing_clip": (["encode", "{root}/none.wav", "-o", "{root}/v.voice", "--model", "{model}"],
                            ["not found"]),
    "encode_noise_to_tree": (["encode", "{clip}", "-o", "{root}/x/y/v.voice", "--model", "{model}"],
                             ["does not exist"]),
    "generate_ssml_break": (["generate", "--text", "Hi <break time='1s'/> there.", "-o", "{root}/z.npy",
                             "--model", "{model}"], ["break", "latents cannot hold"]),
    "decode_nan": (["decode", "{nan.npy}", "-o", "{out}", "--model", "{model}"], ["NaN"]),
    "decode_shape": (["decode", "{shape.npy}", "-o", "{out}", "--model", "{model}"], ["shape"]),
    "decode_complex": (["decode", "{complex.npy}", "-o", "{out}", "--model", "{model}"], ["real-valued"]),
    "decode_over_input": (["decode", "{text.wav}", "-o", "{text.wav}", "--model", "{model}"], ["same file"]),
    "interactive_dir_is_file": (["interactive", "--model", "{model}", "-o", "{clip}"], ["not a folder"]),
}


@pytest.mark.parametrize("case", sorted(CLI_REFUSALS))
def test_cli_refuses_with_one_line(case, files, tmp_path, monkeypatch, capsys):
    args, needles = CLI_REFUSALS[case]
    out = tmp_path / "out.wav"
    before = existing_output(out)
    guarded = {p: Path(p).read_bytes() for p in (files["clip"], files["text.wav"])}
    names = {"out": out, **files}
    args = [_fill(a, names) for a in args]
    code, _, err = run_cli(args, monkeypatch, capsys, stdin="")
    line = one_error_line(err)
    assert code == 1
    for needle in needles:
        assert needle.lower() in line.lower(), line
    assert out.read_bytes() == before  # a refused run never touches what was there
    for path, data in guarded.items():
        assert Path(path).read_bytes() == data
    assert not (files["root"] / "a").exists() and not (files["root"] / "x").exists()  # no stray folder trees
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]  # no temporary files left


# ------------------------------------------------------------------------------------------------
# CLI: inputs with a sensible reading
# ------------------------------------------------------------------------------------------------


def test_stream_refused_after_loading_keeps_the_old_file(files, tmp_path, monkeypatch, capsys):
    """A streamed run refused only once the model is loaded (its voice) leaves the file as it was."""
    out = tmp_path / "take.wav"
    before = existing_output(out)
    code, _, err = run_cli(["synthesize", "--text", TEXT, "--stream", "-o", out, "--model", files["model"],
                            "--voice", files["nan.voice"], "--device", "cpu"], monkeypatch, capsys)
    assert code == 1 and "NaN" in one_error_line(err)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["take.wav"]


def test_stream_refusal_as_a_real_process(files, tmp_path):
    """The issue's data loss, run as a user would: an existing o.wav survives a refused --stream."""
    import subprocess

    out = tmp_path / "o.wav"
    before = existing_output(out)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "llamavoice", "synthesize", "--stream", "--text", "", "-o", str(out),
                           "--model", str(files["model"]), "--speed", "inf"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1 and "speed=inf" in one_error_line(proc.stderr)
    assert out.read_bytes() == before


def test_output_folder_one_level_is_created(files, tmp_path, monkeypatch, capsys):
    out = tmp_path / "new" / "out.wav"
    code, _, err = run_cli(["synthesize", "--model", files["model"], "--text", "Hi there.", "-o", out,
                            "--seed", 1, "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    assert sf.info(str(out)).frames > 0


def test_interactive_keeps_earlier_takes(files, tmp_path, monkeypatch, capsys):
    takes = tmp_path / "takes"
    takes.mkdir()
    old = {name: existing_output(takes / name) for name in ("001.wav", "002.wav")}
    code, out, err = run_cli(["interactive", "--model", files["model"], "-o", takes, "--seed", 1, "--device", "cpu"],
                             monkeypatch, capsys, stdin="Hello there.\nexit\n")
    assert code == 0, err
    assert sorted(p.name for p in takes.iterdir()) == ["001.wav", "002.wav", "003.wav"]
    assert all((takes / name).read_bytes() == data for name, data in old.items())
    assert "003.wav" in out


def test_noise_prompt_warns_with_a_measured_reason(files, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(["encode", files["noise"], "-o", tmp_path / "n.voice", "--model", files["model"],
                            "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning: ")]
    assert len(warning) == 1 and "noise" in warning[0] and "spectral flatness 0.5" in warning[0]
    # A clip of (synthetic) speech gets no warning.
    code, _, err = run_cli(["encode", files["clip"], "-o", tmp_path / "c.voice", "--model", files["model"],
                            "--device", "cpu"], monkeypatch, capsys)
    assert code == 0 and "warning" not in err, err


def test_ssml_breaks_are_silence_between_chunks(tts, files, tmp_path, monkeypatch, capsys):
    plain, _ = tts.synthesize("Hello there. How are you?", voice=files["clip"], seed=4)
    ssml = '<speak>Hello there.<break time="1s"/> How are you?</speak>'
    out = tmp_path / "ssml.wav"
    code, _, err = run_cli(["synthesize", "--model", files["model"], "--text", ssml, "-v", files["clip"], "-o", out,
                            "--seed", 4, "--device", "cpu"], monkeypatch, capsys)
    assert code == 0, err
    audio, sr = sf.read(str(out), dtype="float32")
    assert audio.shape[0] == plain.shape[0] + sr  # exactly one second more
    silent = np.flatnonzero(np.abs(audio) < 1e-6)
    runs = np.split(silent, np.flatnonzero(np.diff(silent) != 1) + 1)
    assert max(len(r) for r in runs) >= 0.9 * sr  # the second of silence, less the cross-fades
    streamed = np.concatenate(list(tts.stream(ssml, voice=files["clip"], seed=4)))
    assert streamed.shape == audio.shape and np.abs(streamed - audio).max() <= 1.5 / 32767


def test_markup_in_plain_text_is_not_read_aloud(tts, files):
    with pytest.warns(UserWarning, match="<emphasis>"):
        chunks = tts._chunks("<speak>Say it <emphasis>now</emphasis>, <prosody rate='slow'>slowly</prosody> "
                             "please.</speak>", 200)
    assert [c.rate for c in chunks] == [1.0, 0.75, 1.0]
    spoken = " ".join(tts.tokenizer.decode(c.ids) for c in chunks)
    assert "emphasis" not in spoken and "prosody" not in spoken and "now" in spoken
    # Text that merely uses angle brackets stays text.
    assert tts._chunks("If a < b and b > c, then a < c.", 200)[0].text.startswith("If a < b")


# ------------------------------------------------------------------------------------------------
# The Python API: the same rules
# ------------------------------------------------------------------------------------------------

API_REFUSALS = {
    "temperature_inf": (ConfigError, "temperature=inf", dict(temperature=float("inf"))),
    "temperature_np_inf": (ConfigError, "temperature", dict(temperature=np.float32("inf"))),
    "cfg_weight_nan": (ConfigError, "cfg_weight", dict(cfg_weight=float("nan"))),
    "cfg_weight_1e30": (ConfigError, "cfg_weight", dict(cfg_weight=1e30)),
    "speed_inf": (ConfigError, "speed", dict(speed=float("inf"))),
    "seed_string": (ConfigError, "seed", dict(seed="3")),
    "seed_bool": (ConfigError, "seed", dict(seed=True)),
    "seed_float": (ConfigError, "seed", dict(seed=1.5)),
    "num_samples_1000": (ConfigError, "num_samples", dict(num_samples=1000)),
    "unknown_option": (ConfigError, "temprature", dict(temprature=0.3)),
    "text_none": (TextError, "string", dict(text=None)),
    "text_bytes": (TextError, "string", dict(text=b"hello")),
    "text_over_cap": (TextError, "max_total_chars", dict(text="word " * 5000, max_total_chars=1000)),
    "mostly_japanese": (TextError, "CJK", dict(text="これは日本語の文です。OK")),
    "voice_nan": (CheckpointError, "NaN", dict(voice=Voice(torch.full((30, 8), float("nan")), name="v"))),
    "voice_empty": (CheckpointError, "at least one frame", dict(voice=Voice(torch.zeros(0, 8), name="v"))),
    "voice_too_long": (CheckpointError, "15 s", dict(voice=Voice(torch.randn(20_000, 8), name="v"))),
}


@pytest.mark.parametrize("case", sorted(API_REFUSALS))
def test_api_refuses(case, tts):
    error, match, kwargs = API_REFUSALS[case]
    kwargs = dict(kwargs)
    text = kwargs.pop("text", TEXT)
    with pytest.raises(error, match=match):
        tts.synthesize(text, **kwargs)


def test_api_stream_checks_when_called_not_when_iterated(tts):
    with pytest.raises(TextError, match="empty"):
        tts.stream("  ")
    with pytest.raises(ConfigError, match="cannot stream"):
        tts.stream(TEXT, num_samples=2)
    with pytest.raises(ConfigError, match="chunk_frames"):
        tts.stream(TEXT, chunk_frames=0)


def test_api_numpy_scalars_are_numbers(tts):
    a, _ = tts.synthesize(TEXT, voice="random", seed=np.int64(3), temperature=np.float32(0.5), speed=np.float64(1.0))
    b, _ = tts.synthesize(TEXT, voice="random", seed=3, temperature=0.5)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ConfigError, match="seed"):
        tts.synthesize_batch([TEXT], seeds=[-5])


def test_api_decode_refusals_and_chunked_decode(tts):
    dim = tts.model.config.vae.latent_dim
    with pytest.raises(AudioError, match="NaN"):
        tts.decode_latents(np.full((10, dim), np.inf, np.float32))
    with pytest.raises(AudioError, match="shape"):
        tts.decode_latents(np.zeros((0, dim), np.float32))
    with pytest.raises(AudioError, match="real-valued"):
        tts.decode_latents(np.array([["a"] * dim]))
    # A long sequence is decoded in windows; the result equals one pass over the whole.
    z = torch.randn(2 * 750 + 37, dim, generator=torch.Generator().manual_seed(0))
    windows = tts.decode_latents(z.numpy())
    with torch.inference_mode():
        whole = tts.model.vae.decode(z[None])[0].numpy()
    assert windows.shape == whole.shape and np.abs(windows - whole).max() < 1e-4


def test_api_voice_and_clip_refusals(tts, tmp_path):
    with pytest.raises(AudioError, match="sample_rate"):
        tts.encode_voice(np.zeros(48000, np.float32))
    with pytest.raises(AudioError, match="NaN"):
        tts.encode_voice(np.full(48000 * 4, np.nan, np.float32), sample_rate=48000)
    with pytest.raises(AudioError, match="path or an array"):
        tts.encode_voice(np.array(["not audio"]), sample_rate=16000)
    with pytest.warns(UserWarning, match="steady sound"):
        tts.encode_voice(0.3 * np.sin(np.arange(24000 * 4) * 0.05).astype(np.float32), sample_rate=24000)
    voice = tts.random_voice(1)
    assert voice.num_frames <= 15 * tts.frame_rate + 1  # a random voice is a valid prompt: it can be saved
    with pytest.raises(AudioError, match="could not write voice file /proc"):
        voice.save("/proc/x.voice")


def test_api_minority_script_warns_and_speaks(tts):
    with pytest.warns(UserWarning, match="CJK"):
        chunks = tts._chunks("We flew to Tokyo (東京) last spring and loved it.", 200)
    assert len(chunks) == 1
    with pytest.warns(UserWarning, match="skipped 1 chunk"):
        chunks = tts._chunks("We flew to Tokyo. 东京是日本的首都。 It was great.", 200)
    assert len(chunks) == 2


def test_model_with_broken_config_is_one_error(files):
    for name, match in (("config_list", "list"), ("config_type", "latent_dim"), ("config_negative", "cannot be built")):
        with pytest.raises(CheckpointError, match=match):
            llamavoice.load(files[name], device="cpu")


# ------------------------------------------------------------------------------------------------
# Text normalization: inputs that were mis-read
# ------------------------------------------------------------------------------------------------

NORMALIZER_CASES = {
    "10^50 atoms": "ten to the power of fifty atoms",
    "6.02e23 molecules": "six point zero two times ten to the power of twenty-three molecules",
    "x^2 and 10⁵ m²": "x squared and ten to the power of five m squared",
    "It is 25:61 now.": "It is twenty-five to sixty-one now.",
    "On 2024-02-30 we met.": "On two zero two four, zero two, three zero we met.",
    "On 2024-02-29 we met.": "On February twenty-ninth, twenty twenty-four we met.",
    "See https://www.example.com/docs/page-1?x=2 now.":
        "See w w w dot example dot com slash docs slash page dash one now.",
    "Mail john.doe_99@mail.example.org today.":
        "Mail john dot doe underscore nine nine at mail dot example dot org today.",
    "\x1b[31mRed\x1b[0m alert\x1b]0;title\x07!": "Red alert!",
    "The score was 3:2.": "The score was three to two.",
    "He left.It rained.": "He left.It rained.",  # a missing space is not a web address
}


@pytest.mark.parametrize("raw", sorted(NORMALIZER_CASES))
def test_normalizer_reads_it_right(raw):
    assert normalize_text(raw) == NORMALIZER_CASES[raw]


# ------------------------------------------------------------------------------------------------
# Writers and checkpoints
# ------------------------------------------------------------------------------------------------


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path):
    from llamavoice.audio import save_audio
    from llamavoice.audio.io import AudioWriter

    out = tmp_path / "a.wav"
    before = existing_output(out)
    with pytest.raises(AudioError, match="NaN"):
        save_audio(out, np.array([0.1, np.nan], np.float32), 24000)
    with pytest.raises(RuntimeError, match="killed"), AudioWriter(out, 24000) as writer:
        writer.write(np.zeros(2400, np.float32))
        raise RuntimeError("killed half way")
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["a.wav"]
    os.chmod(out, 0o640)
    save_audio(out, np.zeros(2400, np.float32), 24000)
    assert sf.info(str(out)).frames == 2400 and (out.stat().st_mode & 0o777) == 0o640  # its permissions kept
    umask = os.umask(0o022)
    os.umask(umask)
    save_audio(tmp_path / "new.wav", np.zeros(2400, np.float32), 24000)
    assert ((tmp_path / "new.wav").stat().st_mode & 0o777) == 0o666 & ~umask  # a new file's usual ones


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_ema_weights_never_unpickle_code(trained_model_dir, tmp_path):
    from safetensors.torch import save_file

    from llamavoice.models.llamavoice import LlamaVoice
    from llamavoice.train.checkpoint import META_FILE, model_from_checkpoint
    from llamavoice.train.ema import EMA

    model = LlamaVoice.from_pretrained(trained_model_dir)
    ckpt = tmp_path / "step_00000010"
    ckpt.mkdir()
    model.tokenizer.save(ckpt)
    save_file({f"model.{k}": v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / META_FILE).write_text(json.dumps({"model": model.config.to_dict(), "ema": True, "stage": "lm"}))
    ema = EMA(model, 0.9)
    for value in ema.shadow.values():
        value.add_(1.0)
    torch.save(ema.state_dict(), ckpt / "custom_checkpoint_1.pkl")  # what accelerate writes
    loaded, which = model_from_checkpoint(ckpt)
    assert which == "checkpoint EMA weights"
    name = next(iter(ema.shadow))
    assert torch.equal(dict(loaded.named_parameters())[name], ema.shadow[name])

    marker = tmp_path / "pwned"
    with open(ckpt / "custom_checkpoint_1.pkl", "wb") as f:
        pickle.dump({"shadow": {}, "x": _Exploit(marker)}, f)
    with warnings.catch_warnings(), pytest.raises(CheckpointError, match="custom_checkpoint_1.pkl"):
        warnings.simplefilter("ignore")
        model_from_checkpoint(ckpt)
    assert not marker.exists()
