"""Evaluation during training: WER / SIM (and optionally MOS) on a fixed small subset.

The trainer calls the callback at every step (or only at the steps it chooses); it runs when
``step % every_steps == 0`` and otherwise returns ``{}`` at once. Each run synthesizes the same
first ``max_items`` items, so the curves in TensorBoard (tags ``eval/wer``, ``eval/cer``,
``eval/sim_o``, ``eval/sim_prompt``, ``eval/mos``, ``eval/rtf``, ``eval/failed``) compare like
with like. The scorers are loaded once and kept between runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llamavoice.errors import ConfigError
from llamavoice.eval.harness import Scorers, score_item
from llamavoice.eval.lists import EvalItem, load_eval_list
from llamavoice.eval.report import summarize
from llamavoice.eval.systems import LlamaVoiceSystem

DEFAULT_METRICS = ("asr", "sim", "speed")


def _system_via_saved_copy(model: Any, tmp: Path, seed: int, **sampling: Any) -> LlamaVoiceSystem:
    """Wrap an in-memory model in the public inference API by saving it to a scratch directory.

    Goes through exactly the path users take (save → ``llamavoice.load``), so what is measured is
    what ships.
    """
    model.save_pretrained(tmp)
    return LlamaVoiceSystem(tmp, device=str(model.device), seed=seed, name="model", **sampling)


class EvalCallback:
    """Score the model being trained on a small, fixed subset of an eval list.

    ``system_factory(model, scratch_dir)`` may be given to build the system under test some other
    way; by default the model is saved to a temporary directory and loaded with
    ``llamavoice.load`` (:class:`~llamavoice.eval.systems.LlamaVoiceSystem`), speaking with the
    ``sampling`` settings (SamplingConfig fields) over the library defaults.
    """

    def __init__(self, eval_list: str | Path | Sequence[EvalItem], every_steps: int = 1000, max_items: int = 8,
                 metrics: Sequence[str] = DEFAULT_METRICS, seed: int = 0, scorers: Scorers | None = None,
                 system_factory: Callable[[Any, Path], Any] | None = None, log_audio: bool = True,
                 sampling: dict[str, Any] | None = None) -> None:
        if every_steps < 1:
            raise ConfigError(f"every_steps must be >= 1, got {every_steps}")
        if max_items < 1:
            raise ConfigError(f"max_items must be >= 1, got {max_items}")
        items = load_eval_list(eval_list) if isinstance(eval_list, (str, Path)) else list(eval_list)
        if not items:
            raise ConfigError("the eval list for the training callback is empty")
        self.items = items[:max_items]
        self.every_steps = every_steps
        self.metrics = tuple(metrics)
        self.seed = seed
        self.scorers = scorers or Scorers()
        self.system_factory = system_factory or (
            lambda model, tmp: _system_via_saved_copy(model, tmp, self.seed, **(sampling or {})))
        self.log_audio = log_audio
        self.last_errors: list[str] = []

    def should_run(self, step: int) -> bool:
        return step % self.every_steps == 0

    def __call__(self, model: Any, step: int, writer: Any | None = None) -> dict[str, float]:
        """Evaluate if ``step`` is due (see :meth:`should_run`), log to ``writer``, return the figures."""
        if not self.should_run(step):
            return {}
        return self.evaluate(model, step, writer)

    def evaluate(self, model: Any, step: int, writer: Any | None = None) -> dict[str, float]:
        """Evaluate now, whatever the step. Returns e.g. ``{"wer": 0.12, "sim_o": 0.71, ...}``."""
        was_training = getattr(model, "training", False)
        if hasattr(model, "eval"):
            model.eval()
        try:
            with tempfile.TemporaryDirectory(prefix="llamavoice-eval-") as tmp:
                system = self.system_factory(model, Path(tmp))
                rows, first_audio = [], None
                for item in self.items:
                    row, audio, sr = score_item(system, item, self.scorers, self.metrics)
                    rows.append(row)
                    if first_audio is None and audio is not None and audio.size:
                        first_audio = (audio, sr)
        finally:
            if hasattr(model, "train"):
                model.train(was_training)
        # Items that failed (a voice prompt too short, ...): the trainer writes them to its log.
        self.last_errors = [f"{r['item_id']}: {r['error']}" for r in rows if r["error"]]
        stats = next(iter(summarize(rows).values()))
        figures = {k: stats[k] for k in ("wer", "cer", "sim_o", "sim_prompt", "mos") if stats.get(k) is not None}
        if stats.get("rtf_p50") is not None:
            figures["rtf"] = stats["rtf_p50"]
        figures["failed"] = float(stats["failed"])
        if writer is not None:
            for key, value in figures.items():
                writer.add_scalar(f"eval/{key}", value, step)
            if self.log_audio and first_audio is not None:
                audio, sr = first_audio
                writer.add_audio("eval/sample", audio[None], step, sample_rate=sr)
        return figures
