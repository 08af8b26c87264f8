"""Run logging: TensorBoard scalars, a metrics.jsonl file, audio samples and mel plots.

Only the main process writes. ``metrics.jsonl`` has one JSON object per line (``step``, ``split``
and the values) and is what tests and scripts read; on resume the lines past the resumed step are
dropped, so the file always describes one consistent run.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from llamavoice.audio import save_audio

log = logging.getLogger(__name__)


# Validation figures worth a curve, in the order of issue 10's diagnostics where a stage has them.
VALIDATION_CURVES = ("kl", "text_gap", "diagonality", "wer", "cer", "stop", "mel")


class RunLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.enabled = enabled
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra ([train])
                log.warning("tensorboard is not installed (pip install 'llamavoice[train]'); only metrics.jsonl")
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tb"))

    def truncate_after(self, step: int) -> None:
        """Forget metrics logged after ``step`` (a killed run may have gone past its last checkpoint)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        kept = [line for line in self.metrics_path.read_text().splitlines()
                if line.strip() and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def scalars(self, step: int, values: dict[str, float], split: str = "train", tensorboard: bool = True) -> None:
        if not self.enabled:
            return
        with self.metrics_path.open("a") as f:
            f.write(json.dumps({"step": step, "split": split, **values}) + "\n")
        if self.writer is not None and tensorboard:
            for name, value in values.items():
                self.writer.add_scalar(f"{split}/{name}", value, step)

    def audio(self, step: int, name: str, audio: np.ndarray, sample_rate: int,
              mels: dict[str, np.ndarray] | None = None) -> None:
        """Write ``samples/step_N/name.wav`` and, with ``mels`` (title → (n_mels, frames)), a PNG."""
        if not self.enabled:
            return
        folder = self.run_dir / "samples" / f"step_{step:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        audio = np.asarray(audio, dtype=np.float32)
        if audio.size and np.isfinite(audio).all():
            save_audio(folder / f"{name}.wav", audio, sample_rate)
            if self.writer is not None:
                self.writer.add_audio(f"samples/{name}", np.clip(audio, -1, 1), step, sample_rate=sample_rate)
        if mels:
            figure = mel_figure(mels)
            figure.savefig(folder / f"{name}.png", dpi=80)
            if self.writer is not None:
                self.writer.add_figure(f"mels/{name}", figure, step)
            import matplotlib.pyplot as plt

            plt.close(figure)

    def plot_validation(self) -> None:
        """``validation.png``: the figures of every validation so far against the step (losses,
        text-use gap, alignment diagonality, WER; whichever the stage logs)."""
        if not self.enabled or not self.metrics_path.is_file():
            return
        rows = [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]
        curves: dict[str, tuple[list[int], list[float]]] = {}
        for row in rows:
            if row["split"] not in ("val", "eval"):
                continue
            for key in VALIDATION_CURVES:
                if isinstance(row.get(key), (int, float)) and np.isfinite(row[key]):
                    steps, values = curves.setdefault(f"{row['split']}/{key}", ([], []))
                    steps.append(row["step"])
                    values.append(row[key])
        if not curves:
            return
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(len(curves), 1, figsize=(7, 1.8 * len(curves)), sharex=True, squeeze=False)
        ordered = sorted(curves.items(), key=lambda curve: VALIDATION_CURVES.index(curve[0].split("/")[1]))
        for ax, (name, (steps, values)) in zip(axes[:, 0], ordered, strict=True):
            ax.plot(steps, values, marker="o", markersize=3)
            ax.set_ylabel(name, fontsize=8)
            ax.grid(alpha=0.3)
        axes[-1, 0].set_xlabel("step")
        fig.tight_layout()
        fig.savefig(self.run_dir / "validation.png", dpi=80)
        plt.close(fig)

    def text(self, message: str) -> None:
        if self.enabled:
            with (self.run_dir / "train.log").open("a") as f:
                f.write(message.rstrip() + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def mel_figure(mels: dict[str, np.ndarray]) -> Any:
    """One row per log-mel spectrogram, on a shared colour scale."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(mels), 1, figsize=(10, 2.2 * len(mels)), squeeze=False)
    values = [m for m in mels.values() if m.size]
    vmin = min(float(m.min()) for m in values) if values else 0.0
    vmax = max(float(m.max()) for m in values) if values else 1.0
    for ax, (title, mel) in zip(axes[:, 0], mels.items(), strict=True):
        ax.imshow(mel, origin="lower", aspect="auto", interpolation="none", vmin=vmin, vmax=vmax)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("mel bin")
    axes[-1, 0].set_xlabel("frame")
    fig.tight_layout()
    return fig
