"""The Python API: ``llamavoice.load(model_dir) -> TTS`` and ``llamavoice.synthesize(text)``.

A :class:`TTS` owns one model on one device. Text goes through sentence splitting (at most
``max_chars`` per chunk), every chunk is generated with the same voice prompt and a seed derived
from (seed, chunk index, candidate index), decoded, and the chunks are joined with short
equal-power cross-fades. ``stream`` yields the same audio piece by piece as frames are generated.

Voices: ``None`` (the model's default voice, ``<model>/voices/default.safetensors``), a name from
``<model>/voices/``, ``"random"`` (a seed-controlled voice made without a prompt), a path to a
saved voice (safetensors, any extension) or to an audio clip, or a :class:`Voice`.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from llamavoice.errors import AudioError, CheckpointError, ConfigError, TextError
from llamavoice.inference.generator import Generated, GenerationItem, LatentGenerator, memory_guard
from llamavoice.inference.onnx import find_step, load_step_decoder
from llamavoice.inference.runtime import Precision, apply_precision, resolve_precision, set_threads
from llamavoice.inference.sampling import SamplingConfig
from llamavoice.inference.streaming import (
    CrossfadeJoiner,
    LatentStretcher,
    StreamingDecoder,
    decoder_context,
    stretch_latents,
)
from llamavoice.inference.voice import MAX_VOICE_SECONDS, Voice, check_latents, is_voice_file, model_fingerprint
from llamavoice.models.llamavoice import LlamaVoice

DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "checkpoints" / "default"
VOICES_DIR = "voices"
DEFAULT_VOICE = "default"
SAMPLING_FILE = "sampling.json"  # optional per-model sampling defaults
MIN_PROMPT_SECONDS = 3.0
MAX_PROMPT_SECONDS = MAX_VOICE_SECONDS
# Latent frames per VAE decoder call when decoding a long sequence (30 s at 25 Hz): the windows
# overlap by the decoder's receptive field, so the audio equals one pass while memory stays flat.
DECODE_CHUNK_FRAMES = 750
# What a random voice says while it is being created (its latents become the voice prompt).
RANDOM_VOICE_TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home."

VoiceLike = Union[None, str, Path, Voice]  # noqa: UP007 (a runtime alias: `|` needs 3.10 types)
Scorer = Callable[[np.ndarray, int, str], float]
# Where ``TTS.stream`` gets the frames of one sentence: the kept groups (r, D) of an item, in
# order, until it stops. Default: the TTS's own generator; the server passes its batching loop.
FrameSource = Callable[[GenerationItem, SamplingConfig], Iterator[torch.Tensor]]


# --------------------------------------------------------------------------------------------
# resolving user inputs
# --------------------------------------------------------------------------------------------


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None picks CUDA when present; anything unusable raises ConfigError."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ConfigError(f"unknown device {device!r}; use cpu, cuda, cuda:N or auto") from exc
    if dev.type == "cpu":
        return dev
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s) found; use cuda:0 or cpu"
            )
        return dev
    if dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"device {device!r} requested but MPS is not available here; use --device cpu")
        return dev
    raise ConfigError(f"device type {dev.type!r} is not supported; use cpu or cuda")


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


def derive_seed(seed: int, *path: int) -> int:
    """An independent 63-bit seed for (seed, chunk, candidate, ...), stable across runs."""
    digest = hashlib.blake2b(":".join(str(x) for x in (seed, *path)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def fresh_seed() -> int:
    """A seed from torch's global RNG, so ``torch.manual_seed`` makes unseeded calls repeatable."""
    return int(torch.randint(0, 2**31 - 1, (1,)).item())


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
class _Chunk:
    text: str  # the raw sentence chunk
    ids: list[int]
    chars: int  # normalized characters (drives min/max length)
    rate: float = 1.0  # SSML <prosody rate>: multiplies the speed option
    pause_before: float = 0.0  # SSML <break>: seconds of silence before / after the chunk's audio
    pause_after: float = 0.0


@dataclass
class _Job:
    """One (text, chunk) to generate, with its candidates."""

    text_index: int
    chunk_index: int
    chunk: _Chunk
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
        """``onnx``: run the LM step on ONNX Runtime from ``<model_dir>/onnx/lm_step.onnx`` (made by
        ``llamavoice export-onnx``). None (default): when that file exists and the LM runs int8 on
        the CPU; True: required; False: never."""
        if model.tokenizer is None:
            raise CheckpointError("the model has no tokenizer; load it from a model directory with its tokenizer files")
        self.device = resolve_device(device)
        # Precision per part (runtime.py): "auto" is the fastest measured for the device.
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
                                         step_decoder=load_step_decoder(model.lm, onnx_step, bool(onnx)))
        self.sampling = sampling if sampling is not None else read_sampling_defaults(self.model_dir)
        self.context = decoder_context(model.vae)
        self.model_id = model_fingerprint(model)
        self._voices: dict[str, Voice] = {}

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

    # --- voices ----------------------------------------------------------------------------------
    def list_voices(self) -> list[str]:
        """Names of the voices shipped in ``<model>/voices/``."""
        if self.model_dir is None or not (self.model_dir / VOICES_DIR).is_dir():
            return []
        return sorted(p.stem for p in (self.model_dir / VOICES_DIR).glob("*.safetensors"))

    def encode_voice(
        self, clip: str | Path | np.ndarray | torch.Tensor, sample_rate: int | None = None, name: str = ""
    ) -> Voice:
        """Encode a 3-15 s reference clip (any format, rate, channels) into a reusable voice.
        Longer clips are cut to their first 15 s; silence at the ends is trimmed first."""
        from llamavoice.audio import load_prompt_audio

        sr = self.sample_rate
        if isinstance(clip, (str, Path)):
            audio = load_prompt_audio(clip, sr, min_seconds=MIN_PROMPT_SECONDS, max_seconds=MAX_PROMPT_SECONDS)
            source = str(clip)
        else:
            audio = _prepare_array_clip(clip, sample_rate, sr)
            source = "array"
        with torch.inference_mode(), memory_guard(self.device, 1):
            wav = torch.from_numpy(np.ascontiguousarray(audio)).float()[None].to(self.device)
            mu, _ = self.model.vae.encode(wav)
            # The posterior mean: a clip always gives the same voice.
            u, _ = self.model.flow(mu[0])
        name = name or (Path(source).stem if source != "array" else "voice")
        return Voice(latents=u.float().cpu(), name=name, source=source, duration=len(audio) / sr,
                     model_id=self.model_id)

    def random_voice(self, seed: int | None = None) -> Voice:
        """A voice invented by the model from a seed: it speaks a fixed sentence with no prompt,
        and those latents become the prompt for everything else (so the voice stays the same
        across sentences and can be saved)."""
        seed = fresh_seed() if seed is None else int(seed)
        key = f"random:{seed}"
        if key not in self._voices:
            # At most a prompt's length, so the voice can be saved and loaded again.
            cfg = self.sampling.replace(num_samples=1, seed=seed, speed=1.0, max_seconds=MAX_PROMPT_SECONDS)
            chunk = self._chunks(RANDOM_VOICE_TEXT, cfg)[0]
            lo, hi = cfg.frame_limits(chunk.chars, self.frame_rate)
            item = GenerationItem(chunk.ids, torch.zeros(0, self.model.config.vae.latent_dim),
                                  derive_seed(seed, 0, 0), lo, hi)
            result = self.generator.generate([item], cfg)[0]
            self._voices[key] = Voice(latents=result.u, name=f"random-{seed}", source=key,
                                      duration=result.u.shape[0] / self.frame_rate, model_id=self.model_id)
        return self._voices[key]

    def get_voice(self, voice: VoiceLike, seed: int | None = None) -> Voice:
        """Resolve any accepted voice argument to a :class:`Voice` (cached by name/path)."""
        if isinstance(voice, Voice):
            return self._check_voice(voice)
        if voice is None:
            voice = DEFAULT_VOICE
            if DEFAULT_VOICE not in self.list_voices():
                if "default:random" not in self._voices:
                    warnings.warn(
                        "this model ships no default voice (voices/default.safetensors); using the random voice "
                        "of seed 0. Pass a voice clip to clone a real voice.",
                        stacklevel=3,
                    )
                    self._voices["default:random"] = self.random_voice(0)
                return self._voices["default:random"]
        voice = str(voice)
        if voice == "random":
            return self.random_voice(seed)
        if voice in self.list_voices():
            assert self.model_dir is not None
            path = self.model_dir / VOICES_DIR / f"{voice}.safetensors"
        else:
            path = Path(voice).expanduser()
            if not path.exists():
                names = ", ".join(self.list_voices()) or "none"
                raise AudioError(
                    f"voice {voice!r} is neither a voice of this model (available: {names}) nor an existing file; "
                    "pass an audio clip, a saved voice, a voice name or 'random'"
                )
        key = str(path.resolve())
        if key not in self._voices:
            if path.is_file() and is_voice_file(path):
                self._voices[key] = self._check_voice(Voice.load(path))
            else:
                self._voices[key] = self.encode_voice(path)
        return self._voices[key]

    def _check_voice(self, voice: Voice) -> Voice:
        if not isinstance(voice.latents, torch.Tensor):
            raise CheckpointError(f"voice {voice.name!r} has no latents tensor; make voices with encode_voice")
        check_latents(voice.latents, f"voice {voice.name or voice.source or '(unnamed)'!r}", self.frame_rate)
        dim = self.model.config.vae.latent_dim
        if voice.latent_dim != dim:
            raise CheckpointError(
                f"voice {voice.name!r} has {voice.latent_dim}-dimensional latents but this model uses {dim}; "
                "it was encoded with a different model: encode the clip again with this one"
            )
        if voice.model_id and voice.model_id != self.model_id:
            warnings.warn(
                f"voice {voice.name!r} was encoded with a different model ({voice.model_id} vs {self.model_id}); "
                "it may sound wrong: encode the clip again with this model",
                stacklevel=3,
            )
        return voice

    # --- text ------------------------------------------------------------------------------------
    def _chunks(self, text: str, cfg: SamplingConfig | int) -> list[_Chunk]:
        """Split a text (plain or SSML) into chunks of at most ``cfg.max_chars`` characters (or
        ``cfg`` characters, given an int), each with its token ids, speaking rate and the silences
        around it. Everything that can be wrong with the text is found here, before any generation."""
        from llamavoice.text import script_names, split_sentences, unsupported_letters

        if not isinstance(cfg, SamplingConfig):
            cfg = self.sampling.replace(max_chars=cfg)

        segments = check_text(text, cfg)
        foreign = unsupported_letters(" ".join(seg.text for seg in segments))
        max_tokens = self.model.config.lm.max_text_tokens
        chunks: list[_Chunk] = []
        skipped: list[tuple[str, str]] = []

        def add(piece: str, limit: int, rate: float) -> None:
            try:
                ids = self.tokenizer.encode(piece)
                chars = len(self.tokenizer.normalize(piece))
            except TextError as exc:
                skipped.append((piece, str(exc)))
                return
            if len(ids) > max_tokens and limit > 16:
                # Token-hungry text (e.g. scripts the tokenizer saw little of): split finer.
                for sub in split_sentences(piece, max(16, limit // 2)):
                    add(sub, max(16, limit // 2), rate)
                return
            chunks.append(_Chunk(piece, ids[:max_tokens], chars, rate))

        pending = 0.0  # silence from segments with nothing to say, carried to the next chunk
        for seg in segments:
            first = len(chunks)
            for piece in split_sentences(seg.text, cfg.max_chars):
                add(piece, cfg.max_chars, seg.rate)
            pending += seg.pause_before
            if len(chunks) > first:
                chunks[first].pause_before += pending
                chunks[-1].pause_after += seg.pause_after
                pending = 0.0
            elif chunks:
                chunks[-1].pause_after += pending + seg.pause_after
                pending = 0.0
            else:
                pending += seg.pause_after
        if not chunks:
            if skipped and "script" in skipped[0][1]:
                raise TextError(skipped[0][1])
            preview = text.strip()[:40]
            raise TextError(f"text {preview!r} has no speakable words (only symbols, emoji or punctuation)")
        if pending:
            chunks[-1].pause_after += pending
        if skipped:
            warnings.warn(f"skipped {len(skipped)} chunk(s) that cannot be spoken, e.g. {skipped[0][0][:40]!r}: "
                          f"{skipped[0][1]}", stacklevel=3)
        elif foreign:
            warnings.warn(f"{len(foreign)} letter(s) in {script_names(foreign)} (e.g. {foreign[:10]!r}) are outside "
                          "what this English-only model can speak and may come out as noise", stacklevel=3)
        return chunks

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
        seed = cfg.seed if cfg.seed is not None else fresh_seed()
        return [seed] * n

    def _pick(
        self, job: _Job, candidates: list[Generated], scorer: Scorer | None, speed: float
    ) -> tuple[Generated, np.ndarray | None]:
        speed = speed * job.chunk.rate
        """Best-of-N: the scorer's favourite, else the most likely candidate that ended by itself."""
        if len(candidates) == 1:
            return candidates[0], None
        if scorer is not None:
            audios = [self._decode(stretch_latents(c.z, speed)) for c in candidates]
            scores = [float(scorer(a, self.sample_rate, job.chunk.text)) for a in audios]
            best = int(np.argmax(scores))
            return candidates[best], audios[best]
        scores = [c.loglik - (0.0 if c.natural_stop and not c.stalled else 1e6) for c in candidates]
        return candidates[int(np.argmax(scores))], None

    def _decode(self, z: torch.Tensor) -> np.ndarray:
        if z.shape[0] == 0:
            return np.zeros(0, dtype=np.float32)
        if z.shape[0] > DECODE_CHUNK_FRAMES + 2 * self.context:
            return np.concatenate(list(self._decode_chunks(z)))
        with torch.inference_mode(), memory_guard(self.device, 1):
            audio = self.model.vae.decode(z.to(self.device, torch.float32)[None])[0]
        return audio.float().cpu().numpy()

    def _decode_chunks(self, z: torch.Tensor | np.ndarray) -> Iterator[np.ndarray]:
        """Decode a latent sequence of any length in windows of DECODE_CHUNK_FRAMES (plus the
        decoder's context on each side), yielding audio as it is ready: memory does not grow with
        the length, and the joined pieces equal a one-pass decode (to float rounding)."""
        decoder = StreamingDecoder(self._decode_tensor, self.samples_per_frame, self.context, DECODE_CHUNK_FRAMES,
                                   DECODE_CHUNK_FRAMES)
        for start in range(0, z.shape[0], DECODE_CHUNK_FRAMES):
            part = torch.as_tensor(np.asarray(z[start : start + DECODE_CHUNK_FRAMES], dtype=np.float32))
            yield from decoder.push(part)
        yield from decoder.finish()

    def _with_pauses(self, audio: np.ndarray, chunk: _Chunk) -> np.ndarray:
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
        return [_join(segs, fade) for segs in segments]

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
        seed = cfg.seed if cfg.seed is not None else fresh_seed()
        audio = self.synthesize_batch([text], voice, seeds=[seed], batch_size=batch_size, scorer=scorer,
                                      progress=progress, sampling=cfg)[0]
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
        seed = cfg.seed if cfg.seed is not None else fresh_seed()
        voice_obj = self.get_voice(voice, seed)
        jobs = self._jobs([text], [voice_obj], [seed], cfg)
        # Everything is checked above, when stream() is called: a bad text or option fails before
        # the caller opens an output, not at the first next().
        return self._stream_jobs(jobs, cfg, chunk_frames, max_chunk_frames, progress, frame_source or self._frames)

    def _stream_jobs(
        self, jobs: list[_Job], cfg: SamplingConfig, chunk_frames: int, max_chunk_frames: int | None,
        progress: bool | None, frame_source: FrameSource,
    ) -> Iterator[np.ndarray]:
        from tqdm.auto import tqdm

        joiner = CrossfadeJoiner(round(cfg.crossfade_seconds * self.sample_rate))
        show = len(jobs) > 1 if progress is None else progress
        for job in tqdm(jobs, desc="streaming", unit="sentence", disable=not show or None, leave=False):
            joiner.begin()
            pieces = self._stream_job(job, cfg, chunk_frames, max_chunk_frames, frame_source)
            before = np.zeros(round(job.chunk.pause_before * self.sample_rate), np.float32)
            after = np.zeros(round(job.chunk.pause_after * self.sample_rate), np.float32)
            for piece in _chain(before, pieces, after):
                out = joiner.push(piece)
                if out.size:
                    yield out
            out = joiner.end()
            if out.size:
                yield out
        out = joiner.finish()
        if out.size:
            yield out

    def _frames(self, item: GenerationItem, cfg: SamplingConfig) -> Iterator[torch.Tensor]:
        """The default frame source: the kept groups of one item from this TTS's generator."""
        for group, state in self.generator.steps([item], cfg):
            if not bool(state.alive[0]):
                return  # closing the loop early skips the steps a GPU runs between stop checks
            yield group[0]

    def _stream_job(
        self, job: _Job, cfg: SamplingConfig, chunk_frames: int, max_chunk_frames: int | None,
        frames: FrameSource,
    ) -> Iterator[np.ndarray]:
        item = self._items(job, cfg)[0]
        stretcher = LatentStretcher(cfg.speed * job.chunk.rate)
        decoder = StreamingDecoder(self._decode_tensor, self.samples_per_frame, self.context, chunk_frames,
                                   max_chunk_frames)
        pending: list[torch.Tensor] = []
        n_pending = 0

        def flush() -> list[np.ndarray]:
            nonlocal pending, n_pending
            if not pending:
                return []
            with torch.inference_mode():
                z = self.generator.to_vae_latents([torch.cat(pending)])[0]
            pending, n_pending = [], 0
            return decoder.push(stretcher.push(z))

        for group in frames(item, cfg):
            pending.append(group.float())
            n_pending += group.shape[0]
            # Run the flow and decoder only when a chunk could be ready (saves small calls).
            if n_pending >= decoder.chunk:
                yield from flush()
        yield from flush()
        with torch.inference_mode():  # (no yield inside: the mode must not leak to the consumer)
            tail = decoder.push(stretcher.finish()) + decoder.finish()
        yield from tail

    def _decode_tensor(self, z: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), memory_guard(self.device, 1):
            return self.model.vae.decode(z.to(self.device, torch.float32)[None])[0]

    # --- the three-step pipeline ------------------------------------------------------------------
    def generate_latents(
        self, text: str, voice: VoiceLike = None, *, scorer: Scorer | None = None, progress: bool | None = None,
        sampling: SamplingConfig | None = None, **overrides: Any,
    ) -> np.ndarray:
        """Text → VAE latents z (T, D) (speed applied; sentence chunks placed one after another)."""
        cfg = self._config(sampling, overrides)
        seed = cfg.seed if cfg.seed is not None else fresh_seed()
        voice_obj = self.get_voice(voice, seed)
        jobs = self._jobs([text], [voice_obj], [seed], cfg)
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
        pieces = list(self.decode_stream(z))
        return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)

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
        return self._decode_chunks(z)


def check_text(text: str, cfg: SamplingConfig) -> list:
    """The checks of a text that need no model: a non-empty string within ``max_total_chars``,
    well-formed SSML (if it is markup), rates within range, and mostly in a script an English
    model can speak. Returns its SSML segments (one for plain text)."""
    from llamavoice.text import script_names, ssml, unsupported_letters

    if not isinstance(text, str):
        raise TextError(f"text must be a string, got {type(text).__name__}")
    if not text.strip():
        raise TextError("text is empty: give at least one word to speak")
    if len(text) > cfg.max_total_chars:
        raise TextError(
            f"text is {len(text):,} characters, more than max_total_chars={cfg.max_total_chars:,} for one call; "
            "raise the limit (--max-total-chars N, or max_total_chars=N in Python) or split the text"
        )
    segments = ssml.parse(text)
    for seg in segments:
        speed = cfg.speed * seg.rate
        if not 0.25 <= speed <= 4.0:
            raise TextError(f"speed {cfg.speed:g} × SSML prosody rate {seg.rate:g} = {speed:g}, outside 0.25-4; "
                            "use a milder rate or speed")
    spoken = " ".join(seg.text for seg in segments)
    foreign = unsupported_letters(spoken)
    if foreign and 2 * len(foreign) >= sum(c.isalpha() for c in spoken):
        raise TextError(
            f"text {text.strip()[:40]!r} is written in a script this English-only model cannot speak "
            f"({script_names(foreign)}); translate it or write it in Latin letters"
        )
    return segments


def check_chunk_frames(name: str, value: Any) -> int:
    """Streaming chunk sizes: whole latent frames, 1 to 10,000 (400 s at 25 Hz)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= 10_000:
        raise ConfigError(f"{name} must be an integer between 1 and 10000 (latent frames), got {value!r}")
    return int(value)


def _chain(before: np.ndarray, pieces: Iterator[np.ndarray], after: np.ndarray) -> Iterator[np.ndarray]:
    yield before
    yield from pieces
    yield after


def _join(segments: list[np.ndarray], fade: int) -> np.ndarray:
    joiner = CrossfadeJoiner(fade)
    parts = []
    for seg in segments:
        joiner.begin()
        parts += [joiner.push(seg), joiner.end()]
    parts.append(joiner.finish())
    audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
    return audio.astype(np.float32, copy=False)


def _prepare_array_clip(clip: np.ndarray | torch.Tensor, sample_rate: int | None, target: int) -> np.ndarray:
    """The array version of ``load_prompt_audio``: mono, resampled, checked, trimmed, normalized."""
    from llamavoice.audio import is_silent, normalize_loudness, resample, rms_dbfs, trim_silence
    from llamavoice.audio.io import warn_prompt_problems

    if sample_rate is None:
        raise AudioError("an audio array needs its sample_rate (encode_voice(array, sample_rate=...))")
    try:
        audio = clip.detach().cpu().float().numpy() if isinstance(clip, torch.Tensor) else np.asarray(clip, np.float32)
    except (TypeError, ValueError) as exc:
        raise AudioError(f"voice clip must be a path or an array of samples, got {type(clip).__name__}") from exc
    if audio.ndim == 2:
        # (channels, samples) or soundfile's (samples, channels): average the short axis.
        audio = audio.mean(axis=0 if audio.shape[0] <= audio.shape[1] else 1)
    if audio.ndim != 1 or audio.size == 0:
        raise AudioError(f"voice clip array must be 1-D or (channels, samples), got shape {audio.shape}")
    if not np.isfinite(audio).all():
        raise AudioError("voice clip contains NaN or infinite samples")
    audio = resample(audio, int(sample_rate), target)
    if is_silent(audio):
        raise AudioError(
            f"voice clip is silent (level {rms_dbfs(audio):.1f} dBFS); give a clip where the speaker is audible"
        )
    audio = trim_silence(audio, target)
    seconds = audio.shape[0] / target
    if seconds < MIN_PROMPT_SECONDS:
        raise AudioError(
            f"voice clip is too short: {seconds:.2f} s of sound after trimming silence, "
            f"need at least {MIN_PROMPT_SECONDS:g} s"
        )
    audio = audio[: int(MAX_PROMPT_SECONDS * target)]
    warn_prompt_problems(audio, target, "array")
    return normalize_loudness(audio)


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

