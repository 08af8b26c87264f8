"""The Python API: ``llamavoice.load(model_dir) -> TTS`` and ``llamavoice.synthesize(text)``.

A :class:`TTS` owns one model on one device and is a facade over the machinery: text goes through
sentence splitting (:mod:`~llamavoice.inference.chunking`, at most ``max_chars`` per chunk), every
chunk is generated (:mod:`~llamavoice.inference.generator`) with the same voice prompt
(:mod:`~llamavoice.inference.voice`) and a seed derived from (seed, chunk index, candidate index),
the best of N candidates is kept, the latents are decoded and the chunks joined with short
equal-power cross-fades (:mod:`~llamavoice.inference.streaming`). ``stream`` yields the same audio
piece by piece as frames are generated.

Voices: ``None`` (the model's default voice, ``<model>/voices/default.safetensors``), a name from
``<model>/voices/``, ``"random"`` (a seed-controlled voice made without a prompt), a path to a
saved voice (safetensors, any extension) or to an audio clip, or a :class:`Voice`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from llamavoice.errors import AudioError, CheckpointError, ConfigError, TextError
from llamavoice.inference.chunking import Chunk, split_text
from llamavoice.inference.device import resolve_device
from llamavoice.inference.generator import Generated, GenerationItem, LatentGenerator, memory_guard
from llamavoice.inference.onnx import find_step, load_step_decoder
from llamavoice.inference.runtime import Precision, apply_precision, resolve_precision, set_threads
from llamavoice.inference.sampling import SamplingConfig, derive_seed, seed_or_fresh
from llamavoice.inference.streaming import (
    StreamingDecoder,
    check_chunk_frames,
    decode_groups,
    decoder_context,
    join_segments,
    join_stream,
    stretch_latents,
)
from llamavoice.inference.voice import (
    MAX_VOICE_SECONDS,
    MIN_VOICE_SECONDS,
    Voice,
    VoiceLibrary,
    VoiceLike,
    prompt_encoder_fingerprint,
)
from llamavoice.models.llamavoice import LlamaVoice

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
SAMPLING_FILE = "sampling.json"  # optional per-model sampling defaults
# Latent frames per VAE decoder call when decoding a long sequence (30 s at 25 Hz): the windows
# overlap by the decoder's receptive field, so the audio equals one pass while memory stays flat.
DECODE_CHUNK_FRAMES = 750
# What a random voice says while it is being created (its latents become the voice prompt).
RANDOM_VOICE_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home."

Scorer = Callable[[np.ndarray, int, str], float]
# Where ``TTS.stream`` gets the frames of one sentence: the kept groups (r, D) of an item, in
# order, until it stops. Default: the TTS's own generator; the server passes its batching loop.
FrameSource = Callable[[GenerationItem, SamplingConfig], Iterator[torch.Tensor]]


# --------------------------------------------------------------------------------------------
# the model directory
# --------------------------------------------------------------------------------------------


def resolve_model_dir(model: str | Path | None) -> Path:
    if model is None:
        if not (DEFAULT_MODEL_DIR / "config.json").is_file():
            raise CheckpointError(
                f"the default model is not installed (expected it in {DEFAULT_MODEL_DIR}); "
                "pass a model directory with --model DIR (model=...)"
            )
        return DEFAULT_MODEL_DIR
    path = Path(model).expanduser()
    if not path.exists():
        raise CheckpointError(f"model directory not found: {path}; pass the folder written by save_pretrained")
    return path


def read_sampling_defaults(model_dir: Path | None) -> SamplingConfig:
    if model_dir is None or not (model_dir / SAMPLING_FILE).is_file():
        return SamplingConfig()
    path = model_dir / SAMPLING_FILE
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return SamplingConfig().replace(**data)
    except (ValueError, ConfigError) as exc:
        raise CheckpointError(f"{path} holds invalid sampling defaults ({exc}); fix or delete it") from exc


@dataclass
class _Job:
    """One (text, chunk) to generate, with its candidates."""

    text_index: int
    chunk_index: int
    chunk: Chunk
    voice: Voice
    seed: int


# --------------------------------------------------------------------------------------------
# TTS
# --------------------------------------------------------------------------------------------


class TTS:
    """A loaded model ready to speak. Create with :func:`load` or ``TTS.from_dir``."""

    def __init__(
        self,
        model: LlamaVoice,
        *,
        model_dir: str | Path | None = None,
        device: str | torch.device | None = "cpu",
        dtype: str | torch.dtype | Precision = "auto",
        compile: bool = False,
        attention: str = "sdpa",
        sampling: SamplingConfig | None = None,
        onnx: bool | None = None,
    ):
        """``dtype``: see llamavoice/inference/runtime.py ("auto": the fastest measured for the device).
        ``onnx``: run the LM step on ONNX Runtime from ``<model_dir>/onnx/lm_step.onnx`` (made by
        ``llamavoice export-onnx``). None: when that file exists and the LM runs int8 on the CPU;
        True: required; False: never."""
        if model.tokenizer is None:
            raise CheckpointError("the model has no tokenizer; load it from a model directory with its tokenizer files")
        self.device = resolve_device(device)
        self.precision = resolve_precision(dtype, self.device)
        self.dtype = self.precision.lm_dtype
        self.model_dir = Path(model_dir) if model_dir is not None else None
        with memory_guard(self.device, 1):
            model = model.to(self.device).eval()
            onnx_step = find_step(self.model_dir, model.lm, self.precision, self.device, onnx)  # hashes fp32 weights
            apply_precision(model, self.precision)
        self.model = model
        self.tokenizer = model.tokenizer
        self.generator = LatentGenerator(model, compile=compile, attention=attention,
                                         step_decoder=load_step_decoder(onnx_step, bool(onnx)))
        self.sampling = sampling if sampling is not None else read_sampling_defaults(self.model_dir)
        self.context = decoder_context(model.vae)
        self.model_id = prompt_encoder_fingerprint(model)
        self.voices = VoiceLibrary(self.model_dir, self.model_id, model.config.vae.latent_dim, self.frame_rate,
                                   encode=self.encode_voice, invent=self._invent_voice)

    @classmethod
    def from_dir(cls, model_dir: str | Path | None = None, **kwargs: Any) -> TTS:
        path = resolve_model_dir(model_dir)
        try:
            model = LlamaVoice.from_pretrained(path, device="cpu")
        except (RuntimeError, ValueError, TypeError, ZeroDivisionError, OverflowError) as exc:
            # config.json passed the type checks but describes a model torch cannot build
            # (e.g. a negative width): one line, not a traceback from inside a layer.
            raise CheckpointError(f"{path / 'config.json'} describes a model that cannot be built "
                                  f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                                  "re-export the model") from exc
        return cls(model, model_dir=path, **kwargs)

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    @property
    def frame_rate(self) -> float:
        return self.model.config.audio.latent_rate

    @property
    def samples_per_frame(self) -> int:
        return self.model.config.audio.samples_per_latent

    # --- voices (the library: inference/voice.py) ------------------------------------------------
    def list_voices(self) -> list[str]:
        """Names of the voices shipped in ``<model>/voices/``."""
        return self.voices.names()

    def get_voice(self, voice: VoiceLike, seed: int | None = None) -> Voice:
        """Resolve any accepted voice argument to a :class:`Voice` (cached by name/path)."""
        return self.voices.get(voice, seed)

    def random_voice(self, seed: int | None = None) -> Voice:
        """A voice invented by the model from a seed: it speaks a fixed sentence with no prompt,
        and those latents become the prompt for everything else (so the voice stays the same
        across sentences and can be saved)."""
        return self.voices.random(seed)

    def encode_voice(
        self, clip: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None = None, name: str = ""
    ) -> Voice:
        """Encode a 3-15 s reference clip (any format, rate, channels) into a reusable voice.
        Longer clips are cut to their first 15 s; silence at the ends is trimmed first."""
        from llamavoice.audio import load_prompt_audio, prepare_prompt_array

        sr, limits = self.sample_rate, {"min_seconds": MIN_VOICE_SECONDS, "max_seconds": MAX_VOICE_SECONDS}
        if isinstance(clip, (str, Path)):
            audio, source = load_prompt_audio(clip, sr, **limits), str(clip)
        else:
            audio, source = prepare_prompt_array(clip, sample_rate, sr, **limits), "array"
        with torch.inference_mode(), memory_guard(self.device, 1):
            wav = torch.from_numpy(np.ascontiguousarray(audio)).float()[None].to(self.device)
            mu, _ = self.model.vae.encode(wav)
            # The posterior mean: a clip always gives the same voice.
            u, _ = self.model.flow(mu[0])
        name = name or (Path(source).stem if source != "array" else "voice")
        return Voice(latents=u.float().cpu(), name=name, source=source, duration=len(audio) / sr,
                     model_id=self.model_id)

    def _invent_voice(self, seed: int) -> Voice:
        """The random voice of ``seed`` (the library caches it)."""
        # At most a prompt's length, so the voice can be saved and loaded again.
        cfg = self.sampling.replace(num_samples=1, seed=seed, speed=1.0, max_seconds=MAX_VOICE_SECONDS)
        chunk = self._chunks(RANDOM_VOICE_TEXT, cfg)[0]
        lo, hi = cfg.frame_limits(chunk.chars, self.frame_rate)
        item = GenerationItem(chunk.ids, torch.zeros(0, self.model.config.vae.latent_dim), derive_seed(seed, 0, 0),
                              lo, hi)
        result = self.generator.generate([item], cfg)[0]
        return Voice(latents=result.u, name=f"random-{seed}", source=f"random:{seed}",
                     duration=result.u.shape[0] / self.frame_rate, model_id=self.model_id)

    # --- text (inference/chunking.py) --------------------------------------------------------------
    def _chunks(self, text: str, cfg: SamplingConfig | int) -> list[Chunk]:
        """Split a text (plain or SSML) into chunks of at most ``cfg.max_chars`` characters (or
        ``cfg`` characters, given an int): see :func:`~llamavoice.inference.chunking.split_text`."""
        if not isinstance(cfg, SamplingConfig):
            cfg = self.sampling.replace(max_chars=cfg)
        return split_text(text, cfg, self.tokenizer, self.model.config.lm.max_text_tokens)

    # --- synthesis -----------------------------------------------------------------------------
    def _config(self, sampling: SamplingConfig | None, overrides: dict[str, Any]) -> SamplingConfig:
        base = sampling if sampling is not None else self.sampling
        return base.replace(**overrides) if overrides else base

    def _jobs(
        self, texts: Sequence[str], voices: Sequence[Voice], seeds: Sequence[int], cfg: SamplingConfig
    ) -> list[_Job]:
        jobs = []
        for t, (text, voice, seed) in enumerate(zip(texts, voices, seeds, strict=True)):
            for c, chunk in enumerate(self._chunks(text, cfg)):
                jobs.append(_Job(t, c, chunk, voice, seed))
        return jobs

    def _items(self, job: _Job, cfg: SamplingConfig) -> list[GenerationItem]:
        lo, hi = cfg.frame_limits(job.chunk.chars, self.frame_rate)
        prompt = job.voice.on(self.device)
        return [
            GenerationItem(job.chunk.ids, prompt, derive_seed(job.seed, job.chunk_index, k), lo, hi,
                           prefix_store=job.voice.prefixes)
            for k in range(cfg.num_samples)
        ]

    def _resolve_voices(self, voices: VoiceLike | Sequence[VoiceLike], n: int, seeds: Sequence[int]) -> list[Voice]:
        if isinstance(voices, (list, tuple)):
            if len(voices) != n:
                raise ConfigError(f"got {len(voices)} voices for {n} texts; pass one voice or one per text")
            return [self.get_voice(v, seed) for v, seed in zip(voices, seeds, strict=True)]
        return [self.get_voice(voices, seeds[0]) for _ in range(n)]

    def _seeds(self, n: int, cfg: SamplingConfig, seeds: Sequence[int] | None) -> list[int]:
        if seeds is not None:
            if len(seeds) != n:
                raise ConfigError(f"got {len(seeds)} seeds for {n} texts")
            return [cfg.replace(seed=s).seed for s in seeds]  # the same checks as the seed option
        return [seed_or_fresh(cfg.seed)] * n

    def _pick(
        self, job: _Job, candidates: list[Generated], scorer: Scorer | None, speed: float
    ) -> tuple[Generated, np.ndarray | None]:
        """Best-of-N: the scorer's favourite, else the most likely candidate that ended by itself.
        Returns the audio too when the scorer needed it."""
        speed = speed * job.chunk.rate
        if len(candidates) == 1:
            return candidates[0], None
        if scorer is not None:
            audios = [self._decode(stretch_latents(c.z, speed)) for c in candidates]
            scores = [float(scorer(a, self.sample_rate, job.chunk.text)) for a in audios]
            best = int(np.argmax(scores))
            return candidates[best], audios[best]
        scores = [c.loglik - (0.0 if c.natural_stop and not c.stalled else 1e6) for c in candidates]
        return candidates[int(np.argmax(scores))], None

    # --- decoding (VAE latents → audio) ------------------------------------------------------------
    def _vae_decode(self, z: torch.Tensor) -> torch.Tensor:
        """One VAE decoder call: latents (T, D) → audio (T * samples_per_frame,) on the device."""
        with torch.inference_mode(), memory_guard(self.device, 1):
            return self.model.vae.decode(z.to(self.device, torch.float32)[None])[0]

    def _decode(self, z: torch.Tensor | np.ndarray) -> np.ndarray:
        """Latents (T, D) of any length → audio (see :meth:`_decode_windows`)."""
        pieces = list(self._decode_windows(z))
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)

    def _decode_windows(self, z: torch.Tensor | np.ndarray) -> Iterator[np.ndarray]:
        """Decode latents in windows of DECODE_CHUNK_FRAMES (plus the decoder's context on each
        side), yielding audio as it is ready: memory does not grow with the length, and the joined
        pieces equal a one-pass decode (to float rounding). A sequence that one window with its
        context covers is decoded in one pass. ``z`` may be a memory-mapped array: it is read a
        window at a time."""
        n = z.shape[0]
        window = max(1, n) if n <= DECODE_CHUNK_FRAMES + 2 * self.context else DECODE_CHUNK_FRAMES
        decoder = StreamingDecoder(self._vae_decode, self.samples_per_frame, self.context, window, window)
        for start in range(0, n, DECODE_CHUNK_FRAMES):
            part = z[start : start + DECODE_CHUNK_FRAMES]
            yield from decoder.push(part if isinstance(part, torch.Tensor)
                                    else torch.as_tensor(np.asarray(part, dtype=np.float32)))
        yield from decoder.finish()

    def _with_pauses(self, audio: np.ndarray, chunk: Chunk) -> np.ndarray:
        if not (chunk.pause_before or chunk.pause_after):
            return audio
        before, after = (np.zeros(round(p * self.sample_rate), np.float32) for p in (chunk.pause_before,
                                                                                        chunk.pause_after))
        return np.concatenate([before, audio, after])

    def _generate_jobs(
        self, jobs: list[_Job], cfg: SamplingConfig, batch_size: int, progress: bool | None
    ) -> list[Generated]:
        """Generate every job (all candidates), ``batch_size`` sequences at a time."""
        from tqdm.auto import tqdm

        if batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
        items = [(j, item) for j, job in enumerate(jobs) for item in self._items(job, cfg)]
        results: list[Generated] = []
        show = len(jobs) > 1 if progress is None else progress
        bar = tqdm(total=len(items), desc="synthesizing", unit="seq", disable=not show or None, leave=False)
        try:
            for start in range(0, len(items), batch_size):
                batch = [it for _, it in items[start : start + batch_size]]
                results.extend(self.generator.generate(batch, cfg))
                bar.update(len(batch))
        finally:
            bar.close()
        return results

    def synthesize_batch(
        self,
        texts: Sequence[str],
        voices: VoiceLike | Sequence[VoiceLike] = None,
        *,
        seeds: Sequence[int] | None = None,
        batch_size: int = 8,
        scorer: Scorer | None = None,
        progress: bool | None = None,
        sampling: SamplingConfig | None = None,
        **overrides: Any,
    ) -> list[np.ndarray]:
        """Speak several texts, ``batch_size`` sequences per LM batch (left-padded, each item
        stopping on its own). Text i with seed s gives the same audio as
        ``synthesize(texts[i], seed=s)``. Without ``seeds`` every text uses ``seed``."""
        if isinstance(texts, str):
            raise TextError("synthesize_batch takes a list of texts; use synthesize for one text")
        texts = list(texts)
        if len(texts) == 0:
            return []
        cfg = self._config(sampling, overrides)
        seed_list = self._seeds(len(texts), cfg, seeds)
        voice_list = self._resolve_voices(voices, len(texts), seed_list)
        jobs = self._jobs(texts, voice_list, seed_list, cfg)
        results = self._generate_jobs(jobs, cfg, batch_size, progress)
        n = cfg.num_samples
        segments: list[list[np.ndarray]] = [[] for _ in texts]
        for j, job in enumerate(jobs):
            best, audio = self._pick(job, results[j * n : (j + 1) * n], scorer, cfg.speed)
            if audio is None:
                audio = self._decode(stretch_latents(best.z, cfg.speed * job.chunk.rate))
            segments[job.text_index].append(self._with_pauses(audio, job.chunk))
        fade = round(cfg.crossfade_seconds * self.sample_rate)
        return [join_segments(segs, fade) for segs in segments]

    def synthesize(
        self,
        text: str,
        voice: VoiceLike = None,
        *,
        scorer: Scorer | None = None,
        progress: bool | None = None,
        batch_size: int = 8,
        sampling: SamplingConfig | None = None,
        **overrides: Any,
    ) -> tuple[np.ndarray, int]:
        """Speak ``text`` (any length) in ``voice``. Returns (float32 mono audio, sample rate).
        Keyword overrides are :class:`SamplingConfig` fields (temperature, seed, speed, ...)."""
        cfg = self._config(sampling, overrides)
        audio = self.synthesize_batch([text], voice, seeds=[seed_or_fresh(cfg.seed)], batch_size=batch_size,
                                      scorer=scorer, progress=progress, sampling=cfg)[0]
        return audio, self.sample_rate

    def stream(
        self,
        text: str,
        voice: VoiceLike = None,
        *,
        chunk_frames: int = 4,
        max_chunk_frames: int | None = 16,
        progress: bool | None = None,
        sampling: SamplingConfig | None = None,
        frame_source: FrameSource | None = None,
        **overrides: Any,
    ) -> Iterator[np.ndarray]:
        """Yield audio chunks (float32, ``sample_rate``) as frames are generated. Joined, they equal
        ``synthesize`` with the same seed. The first chunk of each sentence has ``chunk_frames``
        latent frames (``chunk_frames / frame_rate`` seconds); later ones double up to
        ``max_chunk_frames`` (None: all chunks the same size), which keeps the first audio early
        and the decoding work low. ``frame_source`` replaces the generator that produces each
        sentence's frames (the server's continuous-batching loop)."""
        cfg = self._config(sampling, overrides)
        if cfg.num_samples != 1:
            raise ConfigError("best-of-N (num_samples > 1) needs whole candidates and cannot stream; use num_samples=1")
        chunk_frames = check_chunk_frames("chunk_frames", chunk_frames)
        if max_chunk_frames is not None:
            max_chunk_frames = check_chunk_frames("max_chunk_frames", max_chunk_frames)
        seed = seed_or_fresh(cfg.seed)
        jobs = self._jobs([text], [self.get_voice(voice, seed)], [seed], cfg)
        # Everything is checked above, when stream() is called: a bad text or option fails before
        # the caller opens an output, not at the first next().
        return self._stream_jobs(jobs, cfg, chunk_frames, max_chunk_frames, progress, frame_source or self._frames)

    def _stream_jobs(
        self, jobs: list[_Job], cfg: SamplingConfig, chunk_frames: int, max_chunk_frames: int | None,
        progress: bool | None, frame_source: FrameSource,
    ) -> Iterator[np.ndarray]:
        from tqdm.auto import tqdm

        show = len(jobs) > 1 if progress is None else progress
        bar = tqdm(jobs, desc="streaming", unit="sentence", disable=not show or None, leave=False)
        sentences = (self._stream_job(job, cfg, chunk_frames, max_chunk_frames, frame_source) for job in bar)
        yield from join_stream(sentences, round(cfg.crossfade_seconds * self.sample_rate))

    def _stream_job(
        self, job: _Job, cfg: SamplingConfig, chunk_frames: int, max_chunk_frames: int | None,
        frames: FrameSource,
    ) -> Iterator[np.ndarray]:
        """One sentence's audio as its frames are generated, between its SSML pauses."""
        yield np.zeros(round(job.chunk.pause_before * self.sample_rate), np.float32)
        item = self._items(job, cfg)[0]
        decoder = StreamingDecoder(self._vae_decode, self.samples_per_frame, self.context, chunk_frames,
                                   max_chunk_frames)
        to_latents = lambda u: self.generator.to_vae_latents([u])[0]  # noqa: E731
        yield from decode_groups(frames(item, cfg), to_latents, decoder, cfg.speed * job.chunk.rate)
        yield np.zeros(round(job.chunk.pause_after * self.sample_rate), np.float32)

    def _frames(self, item: GenerationItem, cfg: SamplingConfig) -> Iterator[torch.Tensor]:
        """The default frame source: the kept groups of one item from this TTS's generator."""
        for group, state in self.generator.steps([item], cfg):
            if not bool(state.alive[0]):
                return  # closing the loop early skips the steps a GPU runs between stop checks
            yield group[0]

    # --- the three-step pipeline ------------------------------------------------------------------
    def generate_latents(
        self, text: str, voice: VoiceLike = None, *, scorer: Scorer | None = None, progress: bool | None = None,
        sampling: SamplingConfig | None = None, **overrides: Any,
    ) -> np.ndarray:
        """Text → VAE latents z (T, D) (speed applied; sentence chunks placed one after another)."""
        cfg = self._config(sampling, overrides)
        seed = seed_or_fresh(cfg.seed)
        jobs = self._jobs([text], [self.get_voice(voice, seed)], [seed], cfg)
        if any(job.chunk.pause_before or job.chunk.pause_after for job in jobs):
            raise TextError("SSML <break> pauses are silence in the audio, which latents cannot hold; "
                            "use synthesize (llamavoice synthesize/speak) for text with breaks")
        results = self._generate_jobs(jobs, cfg, 8, progress)
        n = cfg.num_samples
        parts = [stretch_latents(self._pick(job, results[j * n : (j + 1) * n], scorer, cfg.speed)[0].z,
                                 cfg.speed * job.chunk.rate)
                 for j, job in enumerate(jobs)]
        return torch.cat(parts).numpy().astype(np.float32)

    def decode_latents(self, z: np.ndarray | torch.Tensor) -> np.ndarray:
        """VAE latents (T, D) → audio at ``sample_rate`` (decoded in windows: see :meth:`decode_stream`)."""
        return np.concatenate(list(self.decode_stream(z)))

    def decode_stream(self, z: np.ndarray | torch.Tensor) -> Iterator[np.ndarray]:
        """VAE latents (T, D) → audio pieces, decoded DECODE_CHUNK_FRAMES at a time so that an
        hour of latents takes the memory of 30 s. Checked before the first piece."""
        if isinstance(z, torch.Tensor):
            z = z.detach().cpu().numpy()
        if not isinstance(z, np.ndarray) or z.dtype.kind not in "fiu":
            kind = getattr(getattr(z, "dtype", None), "name", type(z).__name__)
            raise AudioError(f"latents must be a real-valued float array, got {kind}")
        dim = self.model.config.vae.latent_dim
        if z.ndim != 2 or z.shape[1] != dim or z.shape[0] == 0:
            raise AudioError(f"latents must have shape (frames, {dim}) for this model, got {tuple(z.shape)}")
        for start in range(0, z.shape[0], 100_000):  # in slices: z may be a memory-mapped file
            if not np.isfinite(z[start : start + 100_000]).all():
                raise AudioError("latents contain NaN or infinite values")
        return self._decode_windows(z)


# --------------------------------------------------------------------------------------------
# module-level API
# --------------------------------------------------------------------------------------------

_LOADED: dict[tuple, TTS] = {}


def load(
    model_dir: str | Path | None = None,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype = "auto",
    *,
    compile: bool = False,
    attention: str = "sdpa",
    threads: int | str | None = "auto",
    onnx: bool | None = None,
) -> TTS:
    """Load a model directory (default: the installed default model) for synthesis. ``dtype="auto"``
    and ``threads="auto"`` pick the fastest measured settings for this machine (see
    llamavoice/inference/runtime.py); ``threads=None`` leaves torch's thread count alone."""
    set_threads(threads)
    return TTS.from_dir(model_dir, device=device, dtype=dtype, compile=compile, attention=attention, onnx=onnx)


def synthesize(
    text: str,
    voice: VoiceLike = None,
    model: str | Path | None = None,
    *,
    device: str | torch.device | None = "auto",
    dtype: str | torch.dtype = "auto",
    **sampling: Any,
) -> tuple[np.ndarray, int]:
    """One call from text to audio. The loaded model is cached for the next call."""
    known = {f.name for f in fields(SamplingConfig)} | {"scorer", "progress", "batch_size"}
    unknown = sorted(set(sampling) - known)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown}; sampling options: {sorted(known)}")
    path = resolve_model_dir(model)
    dev = resolve_device(device)
    key = (str(path.resolve()), str(dev), str(resolve_precision(dtype, dev)))
    if key not in _LOADED:
        _LOADED.clear()  # keep one model in memory
        _LOADED[key] = load(path, device=device, dtype=dtype)
    return _LOADED[key].synthesize(text, voice, **sampling)

