"""``llamavoice prepare``: validate, resample and trim a corpus into a training folder."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command("prepare")
    def prepare_command(
        source: Path = typer.Argument(..., help="Corpus folder (LJSpeech, LibriTTS(-R), VCTK) or a .jsonl/.csv list."),
        out_dir: Path = typer.Argument(..., help="New folder for wavs/, manifest.jsonl, stats.json, skipped.jsonl."),
        format: str = typer.Option("auto", "--format", help="auto, ljspeech, libritts, vctk or manifest."),
        sample_rate: int = typer.Option(24000, "--sample-rate", help="Output rate: the model's sample rate."),
        min_seconds: float = typer.Option(0.5, "--min-seconds", help="Reject shorter clips (after trimming)."),
        max_seconds: float = typer.Option(20.0, "--max-seconds", help="Reject longer clips (after trimming)."),
        workers: int = typer.Option(1, "--workers", min=1, help="Processes converting audio in parallel."),
        val_fraction: float = typer.Option(0.0, "--val-fraction", help="Share of each speaker's utterances "
                                           "written to val.jsonl instead of manifest.jsonl."),
        seed: int = typer.Option(0, "--seed", help="Seed of the validation split."),
        max_clipping: float = typer.Option(0.001, "--max-clipping", help="Reject clips with a larger share of "
                                           "samples at full scale."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Write into a folder that was prepared before."),
    ) -> None:
        """Validate a corpus and write a clean training folder (skipped utterances are reported, not lost)."""
        from llamavoice.data.prepare import prepare

        report = prepare(
            source, out_dir, format=format, sample_rate=sample_rate, min_seconds=min_seconds,
            max_seconds=max_seconds, workers=workers, val_fraction=val_fraction, seed=seed,
            max_clipping_ratio=max_clipping, overwrite=overwrite,
        )
        typer.echo(report.summary())
