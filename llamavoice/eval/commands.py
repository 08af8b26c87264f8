"""``llamavoice eval ...``: the evaluation harness on the command line.

    llamavoice eval make-list --manifest corpus/manifest_heldout_speakers.jsonl --out eval.jsonl
    llamavoice eval run --eval-list eval.jsonl --model-dir runs/lm/final --teacher --piper
    llamavoice eval vae --model-dir runs/vae/final --eval-list eval.jsonl
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer

from llamavoice.errors import ConfigError

eval_app = typer.Typer(help="Measure models offline: WER/CER, speaker similarity, MOS proxy, speed, VAE "
                            "reconstruction.", no_args_is_help=True)


def _metrics(value: str) -> list[str]:
    from llamavoice.eval.harness import METRICS

    chosen = [m.strip() for m in value.split(",") if m.strip()]
    bad = [m for m in chosen if m not in METRICS]
    if bad or not chosen:
        raise ConfigError(f"--metrics takes a comma-separated subset of {','.join(METRICS)}; got '{value}'")
    return chosen


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@eval_app.command("make-list")
def make_list(
    manifest: list[Path] = typer.Option(..., "--manifest", help="Corpus manifest JSONL (repeatable)."),
    out: Path = typer.Option(..., "--out", help="Eval list to write (JSONL)."),
    max_items: int = typer.Option(None, help="Keep at most this many items, spread over speakers."),
    seed: int = typer.Option(0, help="Seed for choosing the subset."),
) -> None:
    """Build an eval list from corpus manifests: each clip's text, another clip of its speaker as prompt."""
    from llamavoice.eval.lists import eval_list_from_manifests, save_eval_list

    items = eval_list_from_manifests(manifest, max_items=max_items, seed=seed)
    save_eval_list(items, out)
    typer.echo(f"wrote {len(items)} items ({len({i.speaker for i in items})} speakers) to {out}")


@eval_app.command("run")
def run(
    eval_list: Path = typer.Option(..., "--eval-list", help="JSONL eval list (see docs/evaluation.md)."),
    model_dir: list[Path] = typer.Option([], "--model-dir", help="Saved LlamaVoice model to score (repeatable)."),
    teacher: bool = typer.Option(False, "--teacher", help="Score the reference recordings themselves (ceiling)."),
    piper: bool = typer.Option(False, "--piper", help="Score Piper (joe voice) on the same sentences (peer)."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: runs/eval/TIMESTAMP)."),
    max_items: int = typer.Option(None, help="Use only the first N items of the list."),
    metrics: str = typer.Option("asr,sim,mos,speed", help="Comma-separated subset of asr,sim,mos,speed."),
    device: str = typer.Option("cpu", help="Device for LlamaVoice models (cpu, cuda)."),
    seed: int = typer.Option(0, help="Sampling seed for LlamaVoice models."),
    threads: int = typer.Option(None, help="torch threads (speed figures depend on it)."),
    save_audio: bool = typer.Option(True, "--save-audio/--no-save-audio", help="Keep generated audio."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Score systems on an eval list; writes utterances.csv, summary.json/.md and plot.png."""
    from llamavoice.eval.harness import default_run_dir, run_eval
    from llamavoice.eval.lists import load_eval_list
    from llamavoice.eval.report import markdown_table
    from llamavoice.eval.systems import LlamaVoiceSystem, PiperSystem, TeacherSystem

    chosen = _metrics(metrics)
    _set_threads(threads)
    items = load_eval_list(eval_list)
    if max_items:
        items = items[:max_items]
    systems = []
    if teacher:
        systems.append(TeacherSystem(items))
    if piper:
        systems.append(PiperSystem())
    systems += [LlamaVoiceSystem(d, device=device, seed=seed) for d in model_dir]
    out = out or default_run_dir()
    command = shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]])
    result = run_eval(items, systems, out, metrics=chosen, save_generated=save_audio, progress=progress,
                      info={"eval_list": str(eval_list), "command": command})
    typer.echo(markdown_table(result.summary))
    typer.echo(f"run directory: {result.out_dir}")


@eval_app.command("vae")
def vae(
    model_dir: Path = typer.Option(..., "--model-dir", help="Saved LlamaVoice model whose VAE to score."),
    eval_list: Path = typer.Option(None, "--eval-list", help="Use the reference clips of this eval list."),
    audio: list[Path] = typer.Option([], "--audio", help="Audio clip(s) to reconstruct (repeatable)."),
    out: Path = typer.Option(None, "--out", help="Run directory (default: runs/eval/TIMESTAMP)."),
    max_items: int = typer.Option(None, help="Use at most N clips."),
    anchors: bool = typer.Option(True, "--anchors/--no-anchors", help="Also score band-limited copies."),
    metrics: str = typer.Option("", help="Also score the reconstructions and the originals: comma list of asr "
                                "(Whisper WER/CER against the eval list's texts), mos (DistillMOS)."),
    threads: int = typer.Option(None, help="torch threads."),
) -> None:
    """VAE reconstruction on held-out audio: PESQ-WB, STOI, log-mel distance (and WER, DistillMOS)."""
    from llamavoice.eval.harness import default_run_dir
    from llamavoice.eval.lists import load_eval_list
    from llamavoice.eval.reconstruction import run_vae_eval

    _set_threads(threads)
    chosen = [m.strip() for m in metrics.split(",") if m.strip()]
    # A clip's text is known only from an eval list: --audio clips have none (the asr metric refuses them).
    texts: dict[Path, str | None] = {clip: None for clip in audio}
    if eval_list is not None:
        for item in load_eval_list(eval_list):
            if item.reference is not None:
                texts.setdefault(item.reference, item.text)
    if not texts:
        raise ConfigError("give --audio clips or an --eval-list with reference clips")
    clips = list(texts)[:max_items] if max_items else list(texts)
    clip_texts = [texts[c] for c in clips]
    out = out or default_run_dir()
    run_vae_eval(model_dir, clips, out, anchors=anchors, info={"model_dir": str(model_dir)}, metrics=chosen,
                 texts=None if None in clip_texts else clip_texts)
    typer.echo((out / "vae_summary.md").read_text())
    typer.echo(f"run directory: {out}")


def register(app: typer.Typer) -> None:
    """Add the ``eval`` command group to the root CLI."""
    app.add_typer(eval_app, name="eval")
