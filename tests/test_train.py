"""Training recipes end to end on the tiny config and a generated dataset of real WAV files.

Runs go through ``recipes/train.py``'s ``main`` (in-process) or as a subprocess where a real process
exit matters (kill-and-resume).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import Accelerator
from conftest import make_batch, make_model, single_thread, synth_audio, write_corpus
from safetensors.torch import load_file

from llamavoice.config import preset
from llamavoice.errors import ConfigError
from llamavoice.models.llamavoice import LlamaVoice
from llamavoice.train.config import load_run_config
from llamavoice.train.optim import lr_factor
from llamavoice.train.stages import VAEStage

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
SR = 24000


def _load_script():
    spec = importlib.util.spec_from_file_location("train_script", ROOT / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_script = _load_script()


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP stalls (5x faster here)."""
    with single_thread():
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("corpus")
    train = write_corpus(root / "train")
    val = write_corpus(root / "val", speakers=2, per_speaker=2)
    return {"train": str(train), "val": str(val)}


def common_args(corpus: dict[str, str], *extra: str) -> list[str]:
    args = ["--config", str(TINY), "--no-progress",
            "--set", f"train.train_manifest={corpus['train']}", "--set", f"train.val_manifest={corpus['val']}",
            "--set", "train.frame_budget_seconds=2.0", "--set", "train.max_utterance_seconds=2.0",
            "--set", "train.vae_segment_seconds=0.2"]
    for item in extra:
        args += ["--set", item]
    return args


def metrics(run_dir: Path, split: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["split"] == split]


def checkpoint_steps(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def stage_runs(corpus, tmp_path_factory) -> dict[str, Path]:
    """vae (GAN from the third step) → lm (from the vae export) → joint (from an lm checkpoint);
    decoder and decoder_lm (from the lm export, whose architecture they take with ``model.preset=DIR``)."""
    root = tmp_path_factory.mktemp("runs")
    runs = {name: root / name for name in ("vae", "lm", "joint", "decoder", "decoder_lm")}
    steps = ["train.max_steps=3", "train.checkpoint_every=1", "train.keep_last=2", "train.val_every=3"]
    assert train_script.main(common_args(corpus, "train.stage=vae", "train.disc_start_step=2", *steps)
                             + ["--run-dir", str(runs["vae"])]) == 0
    assert train_script.main(common_args(corpus, "train.stage=lm", f"train.init_from={runs['vae'] / 'final'}",
                                         "train.ema_decay=0.9", *steps) + ["--run-dir", str(runs["lm"])]) == 0
    lm_checkpoint = runs["lm"] / "checkpoints" / "step_00000003"
    assert train_script.main(common_args(corpus, "train.stage=joint", f"train.init_from={lm_checkpoint}",
                                         "train.max_steps=2", "train.val_every=2", "train.disc_start_step=1")
                             + ["--run-dir", str(runs["joint"])]) == 0
    for stage in ("decoder", "decoder_lm"):
        assert train_script.main(common_args(corpus, f"train.stage={stage}", f"model.preset={runs['lm'] / 'final'}",
                                             f"train.init_from={runs['lm'] / 'final'}", "train.disc_start_step=2",
                                             *steps) + ["--run-dir", str(runs[stage])]) == 0
    return runs


@pytest.mark.parametrize("stage", ["vae", "decoder", "decoder_lm", "lm", "joint"])
def test_stage_runs_and_exports(stage_runs, stage):
    run = stage_runs[stage]
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 2
    expected = {"vae": {"mel", "vae_kl"}, "decoder": {"mel", "vae_kl"}, "decoder_lm": {"mel"}, "lm": {"kl", "stop"},
                "joint": {"mel", "kl", "stop", "vae_kl"}}[stage]
    for r in rows:
        assert expected <= set(r) and all(math.isfinite(r[k]) for k in expected | {"total", "grad_norm"})
        assert r["frames_per_s"] > 0 and r["skipped_steps"] == 0
    if stage in ("vae", "decoder", "decoder_lm", "joint"):  # the discriminators join at disc_start_step, not before
        assert "disc_mrd" not in rows[0] and "disc_mrd" in rows[-1] and "adv_mrd" in rows[-1]
    val = metrics(run, "val")
    assert val and all(math.isfinite(v) for k, v in val[-1].items() if k not in ("step", "split"))

    # Keep-last-K pruning and the content of a checkpoint.
    if stage != "joint":
        assert checkpoint_steps(run) == ["step_00000002", "step_00000003"]
    last = run / "checkpoints" / checkpoint_steps(run)[-1]
    for name in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                 "custom_checkpoint_0.pkl", "meta.json", "tokenizer.json"):
        assert (last / name).is_file(), name
    if stage in ("vae", "decoder", "decoder_lm"):  # discriminators: the second model and optimizer
        assert (last / "model_1.safetensors").is_file() and (last / "optimizer_1.bin").is_file()

    # Logs: TensorBoard events, an audio sample and a mel plot per validation.
    assert list((run / "tb").glob("events.out.tfevents.*"))
    samples = sorted((run / "samples").iterdir())[-1]
    kinds = {"vae": ["recon_0"], "decoder": ["recon_0"], "decoder_lm": ["recon_0"], "lm": ["tts_0"],
             "joint": ["recon_0", "tts_0"]}[stage]
    for kind in kinds:
        assert (samples / f"{kind}.wav").stat().st_size > 1000 and (samples / f"{kind}.png").is_file()

    model = LlamaVoice.from_pretrained(run / "final")
    assert model.tokenizer.encode("Hello there.") and model.config == preset("tiny").__class__.from_dict(
        load_run_config(run / "config.yaml").model.to_dict())


def test_stages_train_the_right_weights(stage_runs):
    vae = load_file(str(stage_runs["vae"] / "final" / "model.safetensors"))
    lm = load_file(str(stage_runs["lm"] / "final" / "model.safetensors"))
    joint = load_file(str(stage_runs["joint"] / "final" / "model.safetensors"))
    enc, dec, head = "vae.encoder.out_proj.weight", "vae.decoder.upsample.weight", "lm.gaussian_head.weight"
    # Stage lm froze the VAE (bitwise), trained the LM; joint trained both.
    assert torch.equal(vae[enc], lm[enc]) and torch.equal(vae[dec], lm[dec])
    assert not torch.equal(vae[head], lm[head])
    assert not torch.equal(lm[enc], joint[enc]) and not torch.equal(lm[head], joint[head])
    # Every run used the tokenizer of the run it started from.
    tok = (stage_runs["vae"] / "tokenizer" / "tokenizer.json").read_text()
    assert (stage_runs["lm"] / "final" / "tokenizer.json").read_text() == tok
    assert (stage_runs["joint"] / "final" / "tokenizer.json").read_text() == tok


@pytest.mark.parametrize("stage", ["decoder", "decoder_lm"])
def test_decoder_stages_train_only_the_decoder(stage_runs, stage):
    lm = load_file(str(stage_runs["lm"] / "final" / "model.safetensors"))
    dec = load_file(str(stage_runs[stage] / "final" / "model.safetensors"))
    assert lm.keys() == dec.keys()
    changed = {k for k in lm if not torch.equal(lm[k], dec[k])}
    # Only the decoder trained: encoder, flow and LM are bit for bit those of the run it started from.
    assert changed and all(k.startswith("vae.decoder.") for k in changed)
    assert "vae.decoder.upsample.weight" in changed
    if stage == "decoder_lm":  # validation also scores the decoder on the LM's teacher-forced latents
        val = metrics(stage_runs[stage], "val")[-1]
        assert math.isfinite(val["mel_lm"]) and val["mel_lm"] > 0


def test_paired_crops_take_the_audio_of_the_cropped_frames():
    from llamavoice.models.llamavoice import Batch
    from llamavoice.train.stages import paired_crops

    spl, frames = 4, torch.tensor([10, 7])
    audio = torch.arange(40.0).repeat(2, 1)  # each sample holds its own index
    latents = torch.arange(10.0)[None, :, None].repeat(2, 1, 3)  # each frame holds its own index
    latents[1, 7:] = -1  # padding beyond the second item's 7 frames
    zeros = torch.zeros(2, dtype=torch.long)
    batch = Batch(zeros[:, None], zeros, audio, frames * spl, audio[:, :8], zeros + 8)
    for _ in range(20):
        real, crops = paired_crops(batch, latents, seconds=5.0, sample_rate=spl, spl=spl)
        assert real.shape == (2, 5 * spl) and crops.shape == (2, 5, 3)  # 5 s is 5 frames of one second
        assert (crops >= 0).all()  # never past an item's own frames
        assert torch.equal(real[:, ::spl], crops[..., 0] * spl)  # the audio of exactly those frames
    real, crops = paired_crops(batch, latents, seconds=100.0, sample_rate=spl, spl=spl)
    assert crops.shape[1] == 7  # the shortest item bounds the crop


def test_decoder_stage_drops_into_another_run(stage_runs, tmp_path):
    from recipes.default_model.export_run import take_decoder

    lm = load_file(str(stage_runs["lm"] / "final" / "model.safetensors"))
    dec = load_file(str(stage_runs["decoder"] / "final" / "model.safetensors"))

    model = LlamaVoice.from_pretrained(stage_runs["lm"] / "final")
    info = take_decoder(model, stage_runs["decoder"])  # a run: its newest weights
    assert info["decoder_from"]["step"] == 3
    assert torch.equal(model.vae.decoder.upsample.weight, dec["vae.decoder.upsample.weight"])
    assert torch.equal(model.lm.gaussian_head.weight, lm["lm.gaussian_head.weight"])
    # A decoder trained on another encoder (joint trained it) does not fit this latent space.
    with pytest.raises(ConfigError, match="another encoder"):
        take_decoder(LlamaVoice.from_pretrained(stage_runs["joint"] / "final"), stage_runs["decoder"] / "final")


def test_kill_and_resume_matches_uninterrupted_run(corpus, tmp_path):
    """6 steps straight vs 3 steps + a hard process exit + --resume: the same loss sequence.

    Stage lm with EMA and grad accumulation; the reference and the resumed part run in separate
    processes, so nothing survives in memory between the halves."""
    extra = ["train.stage=lm", "train.max_steps=6", "train.checkpoint_every=3", "train.val_every=3",
             "train.ema_decay=0.9", "train.grad_accum=2", "model.lm.dropout=0.1"]
    straight, halted = tmp_path / "straight", tmp_path / "halted"
    assert train_script.main(common_args(corpus, *extra) + ["--run-dir", str(straight)]) == 0

    cmd = [sys.executable, str(ROOT / "recipes" / "train.py"), *common_args(corpus, *extra), "--run-dir", str(halted)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*cmd, "--halt-after", "3"], capture_output=True, text=True, env=env)
    assert first.returncode == 17, first.stderr[-2000:]  # exited hard right after the step-3 checkpoint
    assert not (halted / "final").exists() and checkpoint_steps(halted) == ["step_00000003"]
    second = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env)
    assert second.returncode == 0, second.stderr[-2000:]

    a, b = metrics(straight), metrics(halted)
    assert [r["step"] for r in b] == list(range(1, 7))
    for key in ("total", "kl", "stop", "grad_norm"):
        diffs = [abs(x[key] - y[key]) for x, y in zip(a, b, strict=True)]
        assert max(diffs) <= 1e-6, (key, diffs)
    assert metrics(straight, "val") == metrics(halted, "val")
    wa = load_file(str(straight / "final" / "model.safetensors"))
    wb = load_file(str(halted / "final" / "model.safetensors"))
    assert max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa) <= 1e-6

    # Resuming with a different architecture is refused, naming what changed.
    code = train_script.main(common_args(corpus, *extra, "model.lm.depth=3") + ["--run-dir", str(halted), "--resume"])
    assert code == 2
    # Starting from scratch in a directory that holds a run is refused too.
    assert train_script.main(common_args(corpus, *extra) + ["--run-dir", str(halted)]) == 2


def test_wer_at_every_validation_leaves_training_unchanged(corpus, tmp_path):
    """train.eval_items: Whisper's WER on held-out sentences logged (split eval) and plotted at every
    validation; speaking them must not move the training RNG, so the losses equal a run without it."""
    pytest.importorskip("faster_whisper", reason="the WER check is the [eval] extra")
    from llamavoice.audio import save_audio
    from llamavoice.data.manifest import ManifestEntry, read_manifest, write_manifest

    # The held-out speakers' short clips (validation batches) plus two 4-s clips each: voice prompts.
    val = tmp_path / "val"
    entries = list(read_manifest(corpus["val"]))
    for n, speaker in enumerate(sorted({e.speaker for e in entries})):
        for k in range(2):
            path = val / f"{speaker}_long{k}.wav"
            save_audio(path, synth_audio(4.0, SR, seed=50 + 2 * n + k), SR)
            entries.append(ManifestEntry(str(path), "A longer clip of this speaker.", speaker, 4.0, SR))
    write_manifest(val / "manifest.jsonl", entries)
    extra = ["train.stage=lm", "train.max_steps=4", "train.checkpoint_every=4", "train.val_every=2",
             "model.lm.dropout=0.1", f"train.val_manifest={val / 'manifest.jsonl'}"]
    plain, checked = tmp_path / "plain", tmp_path / "checked"
    assert train_script.main(common_args(corpus, *extra) + ["--run-dir", str(plain)]) == 0
    assert train_script.main(common_args(corpus, *extra, "train.eval_items=2", "train.eval_sampling={max_seconds: 1.0}")
                             + ["--run-dir", str(checked)]) == 0

    assert [r["step"] for r in metrics(checked, "eval")] == [2, 4]
    for row in metrics(checked, "eval"):
        assert row["failed"] == 0 and math.isfinite(row["wer"]) and row["wer"] >= 0
    for key in ("total", "kl", "stop", "grad_norm"):
        assert [r[key] for r in metrics(plain)] == [r[key] for r in metrics(checked)], key
    assert metrics(plain, "val") == metrics(checked, "val")
    assert (checked / "validation.png").stat().st_size > 5000 and (plain / "validation.png").is_file()


def test_resume_refusals(corpus, tmp_path, capsys):
    run = tmp_path / "run"
    args = common_args(corpus, "train.stage=lm", "train.max_steps=1", "train.checkpoint_every=1")
    assert train_script.main(args + ["--run-dir", str(run)]) == 0
    capsys.readouterr()
    assert train_script.main(args + ["--set", "model.vae.latent_dim=4", "--run-dir", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "changes the model architecture" in err and "vae.latent_dim: 8 -> 4" in err
    assert train_script.main(args + ["--set", "train.stage=joint", "--run-dir", str(run), "--resume"]) == 2
    assert "init_from" in capsys.readouterr().err
    # A damaged checkpoint: a one-line error, not a safetensors traceback.
    weights = run / "checkpoints" / "step_00000001" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert train_script.main(args + ["--run-dir", str(run), "--resume"]) == 2
    assert "cannot load the training state" in capsys.readouterr().err


def test_nan_guard_skips_and_counts(tmp_path):
    """Bad data (sample values that overflow the mel spectrogram): each step is skipped and counted,
    the weights stay exactly what they were and no NaN reaches them."""
    good = write_corpus(tmp_path / "good", speakers=2, per_speaker=2)
    bad = write_corpus(tmp_path / "bad", speakers=2, per_speaker=2, bad=True)
    base = ["--config", str(TINY), "--no-progress", "--set", "train.frame_budget_seconds=2.0",
            "--set", "train.max_utterance_seconds=2.0", "--set", "train.vae_segment_seconds=0.2",
            "--set", "train.disc_start_step=100", "--set", "train.num_samples=0"]
    assert train_script.main(base + ["--set", f"train.train_manifest={good}", "--set", "train.max_steps=1",
                                     "--run-dir", str(tmp_path / "init")]) == 0
    init = tmp_path / "init" / "final"
    assert train_script.main(base + ["--set", f"train.train_manifest={bad}", "--set", "train.max_steps=3",
                                     "--set", f"train.init_from={init}", "--run-dir", str(tmp_path / "nan")]) == 0
    rows = metrics(tmp_path / "nan")
    assert [r["skipped_steps"] for r in rows] == [1, 2, 3]
    assert all(not math.isfinite(r["total"]) for r in rows)
    before = load_file(str(init / "model.safetensors"))
    after = load_file(str(tmp_path / "nan" / "final" / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_nan_guard_protects_generator_and_discriminators(tokenizer):
    """Stage-level: a NaN batch leaves every weight and optimizer state untouched (both
    discriminators on, MPD included); a good batch then trains normally."""
    model = make_model(tokenizer)
    cfg = load_run_config(data={"model": "tiny", "train": {"train_manifest": "x", "vae_segment_seconds": 0.1,
                                                            "frame_budget_seconds": 20}}).train
    stage = VAEStage(model, cfg, Accelerator())
    stage.prepare()
    assert set(stage.disc.nets) == {"mpd", "mrd"}
    before = {k: v.clone() for k, v in list(model.state_dict().items()) + list(stage.disc.state_dict().items())}
    batch = make_batch(model, [0.3, 0.35])
    poisoned = make_batch(model, [0.3, 0.35])
    poisoned.audio[0] = float("nan")
    result = stage.train_step([poisoned], step=0)
    assert result.skipped
    after = {k: v for k, v in list(model.state_dict().items()) + list(stage.disc.state_dict().items())}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not opt.state for opt in stage.optimizers.values())  # no Adam moments were touched
    result = stage.train_step([batch], step=0)
    assert not result.skipped and all(math.isfinite(v) for v in result.losses.values())
    assert not torch.equal(before["vae.encoder.out_proj.weight"], model.state_dict()["vae.encoder.out_proj.weight"])
    assert not torch.equal(before["nets.mpd.discriminators.0.convs.0.bias"],
                           stage.disc.state_dict()["nets.mpd.discriminators.0.convs.0.bias"])


def test_lr_schedule_and_config_errors(tmp_path):
    values = [lr_factor(s, warmup=4, total=20, min_ratio=0.1) for s in range(21)]
    assert values[0] == pytest.approx(0.25) and values[3] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(values[3:], values[4:], strict=False))
    assert values[20] == pytest.approx(0.1)

    run = load_run_config(TINY, ["train.train_manifest=x.jsonl", "train.lm_optim.lr=1e-3", "model.lm.depth=3"])
    assert run.train.lm_optim.lr == 1e-3 and run.train.lm_optim.betas == (0.9, 0.95) and run.model.lm.depth == 3
    assert run.train.vae_optim.betas == (0.8, 0.9) and run.train.vae_optim.lr == 5e-4
    with pytest.raises(ConfigError, match="unknown key"):
        load_run_config(TINY, ["train.train_manifest=x", "train.max_stepz=3"])
    with pytest.raises(ConfigError, match="train.stage"):
        load_run_config(TINY, ["train.train_manifest=x", "train.stage=gan"])
    with pytest.raises(ConfigError, match="section.key=value"):
        load_run_config(TINY, ["max_steps"])
    with pytest.raises(ConfigError, match="stage lm or joint"):
        load_run_config(TINY, ["train.train_manifest=x", "train.val_manifest=y", "train.eval_items=20"])
    with pytest.raises(ConfigError, match="eval_sampling.*temprature"):
        load_run_config(TINY, ["train.train_manifest=x", "train.val_manifest=y", "train.stage=lm",
                               "train.eval_items=20", "train.eval_sampling={temprature: 0.4}"])
    for name in ("tiny", "small-cpu", "small-gpu", "base"):
        load_run_config(ROOT / "recipes" / "configs" / f"{name}.yaml", ["train.train_manifest=x.jsonl"])
    assert np.isfinite(values).all()
