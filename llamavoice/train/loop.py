"""The training loop, top to bottom: ``scratch`` or ``resume``, one stage per run.

Runs the same on one CPU, one GPU or many GPUs (``accelerate launch``, DDP): every process builds
the same model and data pipeline, takes its own share of the batches (the sampler is rank-aware),
and accelerate synchronizes gradients. Only the main process logs, validates and exports.

Exact resume: a checkpoint holds the weights, optimizers, schedulers, every process's RNG states,
the EMA and :class:`TrainState` (step, epoch, batches consumed in the epoch, skipped steps). Data
order is a function of (seed, epoch) and dataset randomness of (seed, epoch, index), so a resumed
run sees the same batches, the same random crops and the same dropout as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from llamavoice.data.cache import LatentCache
from llamavoice.data.dataset import TTSDataset, collate
from llamavoice.data.latents import LatentTTSDataset, collate_latents, fill_latent_cache, vae_cache_key
from llamavoice.data.manifest import DatasetError, read_manifest
from llamavoice.data.sampler import DurationBatchSampler
from llamavoice.errors import CheckpointError, ConfigError
from llamavoice.losses import frame_mask
from llamavoice.models.llamavoice import Batch, LlamaVoice, Posteriors
from llamavoice.text.tokenizer import TextTokenizer
from llamavoice.train.checkpoint import (
    check_resumable,
    latest_checkpoint,
    list_checkpoints,
    load_init_weights,
    save_checkpoint,
)
from llamavoice.train.config import RunConfig
from llamavoice.train.ema import EMA
from llamavoice.train.logging import RunLogger
from llamavoice.train.samples import log_samples
from llamavoice.train.stages import Stage, build_stage

log = logging.getLogger("llamavoice.train")


@dataclasses.dataclass
class TrainState:
    """Counters saved in every checkpoint (registered with accelerate)."""

    step: int = 0  # optimizer steps done (skipped ones included)
    epoch: int = 0
    batches_in_epoch: int = 0  # micro-batches this process consumed in ``epoch``
    skipped_steps: int = 0  # steps the NaN/inf guard skipped
    sampler: dict[str, Any] = dataclasses.field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def train(run: RunConfig, run_dir: str | Path, resume: bool = False, halt_after: int | None = None,
          progress: bool = True) -> dict[str, Any]:
    """Train one stage. ``resume``: continue from the newest checkpoint in ``run_dir``.

    ``halt_after`` (tests): after the checkpoint of that step, exit the process at once, without
    any cleanup, as a killed job would. Returns a summary (final step, skipped steps, export dir).
    """
    cfg, model_cfg = run.train, run.model
    run_dir = Path(run_dir)

    # --- devices, precision, seeds ----------------------------------------------------------------
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, step_scheduler_with_optimizer=False)
    device, is_main = accelerator.device, accelerator.is_main_process
    set_seed(cfg.seed)

    # --- scratch | resume --------------------------------------------------------------------------
    checkpoint = None
    if resume:
        checkpoint = latest_checkpoint(run_dir)
        if checkpoint is None:
            raise CheckpointError(f"--resume: no checkpoint in {run_dir / 'checkpoints'}; start without --resume")
        meta = check_resumable(checkpoint, model_cfg, cfg.stage)
        if meta.get("ema") != (cfg.ema_decay > 0):
            raise CheckpointError(
                f"cannot resume from {checkpoint}: it was trained with EMA {'on' if meta.get('ema') else 'off'} "
                f"and the config turns it {'on' if cfg.ema_decay > 0 else 'off'}; keep train.ema_decay as it was"
            )
    elif list_checkpoints(run_dir):
        raise ConfigError(
            f"{run_dir} already holds checkpoints of a run: pass --resume to continue it, or choose another --run-dir"
        )
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        run.save(run_dir / ("config.resume.yaml" if resume else "config.yaml"))
    logger = RunLogger(run_dir, enabled=is_main)

    # --- tokenizer: reused on resume; else given, inherited from init_from, or trained here ---------
    train_entries = [e for e in read_manifest(cfg.train_manifest) if e.duration <= cfg.max_utterance_seconds]
    if not train_entries:
        raise DatasetError(f"{cfg.train_manifest}: no utterance of at most {cfg.max_utterance_seconds} s")
    tok_dir = run_dir / "tokenizer"
    if is_main and not resume:
        # A tokenizer comes with init_from only when its LM is taken too (its ids are the LM's).
        inherit = cfg.init_parts is None or "lm" in cfg.init_parts
        source = cfg.tokenizer or (_tokenizer_of(cfg.init_from) if inherit else None)
        if source:
            tokenizer = TextTokenizer.load(source)
        else:
            tokenizer = TextTokenizer.train((e.text for e in train_entries), model_cfg.text.vocab_size,
                                            frontend=model_cfg.text.frontend)
        if tokenizer.frontend != model_cfg.text.frontend:
            raise ConfigError(f"the tokenizer from {source} uses the '{tokenizer.frontend}' text front end but "
                              f"model.text.frontend is '{model_cfg.text.frontend}'; make them agree")
        tokenizer.save(tok_dir)
    accelerator.wait_for_everyone()
    tokenizer = TextTokenizer.load(tok_dir)

    # --- model (before the data: a latent cache is filled with its VAE) ----------------------------------
    model = LlamaVoice(model_cfg, tokenizer)
    if cfg.init_from and not resume:
        logger.text(load_init_weights(model, cfg.init_from, cfg.init_parts, cfg.init_deepen_lm))
    elif resume and cfg.latent_cache:  # the cache key needs the VAE weights the checkpoint holds
        load_init_weights(model, str(checkpoint), ["vae"])

    # --- data: every process builds the same dataset; the sampler hands each its own batches -------
    make_dataset, collate_fn = _data_pipeline(cfg, model, tokenizer, is_main, accelerator)
    dataset = make_dataset(train_entries)
    sampler = DurationBatchSampler(dataset.durations, cfg.frame_budget_seconds, seed=cfg.seed,
                                   num_replicas=accelerator.num_processes, rank=accelerator.process_index)
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate_fn, num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(cfg.seed),
    )
    val_batches = _validation_batches(cfg, make_dataset, collate_fn) if is_main else []
    wer_check = _wer_check(cfg) if is_main and cfg.eval_items else None

    # --- stage -------------------------------------------------------------------------------------------
    stage = build_stage(model, cfg, accelerator)  # freezes what this stage does not train
    if cfg.stage in ("lm", "joint") and not resume:
        _init_flow(model, dataset, collate_fn)
    if cfg.compile:
        for module in (model.lm, model.vae.encoder, model.vae.decoder.backbone):
            module.compile(dynamic=True)
    stage.prepare()  # DDP copies rank 0's weights (incl. the flow's data init) to every process
    ema = EMA(model, cfg.ema_decay, stage.ema_names()) if cfg.ema_decay > 0 else None

    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)
    if checkpoint is not None:
        try:
            accelerator.load_state(str(checkpoint))
        except Exception as exc:  # safetensors, pickle, torch: any of them means an unusable checkpoint
            raise CheckpointError(
                f"cannot load the training state in {checkpoint} ({type(exc).__name__}: {str(exc)[:300]}); "
                "it may be truncated or from an incompatible llamavoice version: resume from an older "
                "checkpoint (delete this one) or start a new run with train.init_from"
            ) from exc
        sampler.load_state_dict(state.sampler or {"epoch": state.epoch, "batches_yielded": state.batches_in_epoch})
        logger.truncate_after(state.step)
        logger.text(f"resumed from {checkpoint} at step {state.step}")
    meta = {"stage": cfg.stage, "architecture": model_cfg.architecture_dict(), "model": model_cfg.to_dict(),
            "train": dataclasses.asdict(cfg), "ema": ema is not None, "num_processes": accelerator.num_processes}

    def batches():
        """Micro-batches forever, epoch after epoch, counting what the loop actually consumed."""
        while True:
            dataset.set_epoch(state.epoch)
            sampler.set_epoch(state.epoch)
            for batch in loader:
                state.batches_in_epoch += 1
                yield batch
            state.epoch += 1
            state.batches_in_epoch = 0

    # --- the loop ----------------------------------------------------------------------------------------
    stage.train()
    data = batches()
    bar = tqdm(total=cfg.max_steps, initial=state.step, disable=not (is_main and progress), dynamic_ncols=True)
    last: dict[str, float] = {}
    while state.step < cfg.max_steps:
        micro = [next(data).to(device) for _ in range(cfg.grad_accum)]
        t0 = time.perf_counter()
        result = stage.train_step(micro, state.step)
        elapsed = time.perf_counter() - t0
        state.step += 1
        step = state.step
        if accelerator.num_processes > 1:  # log the mean over processes, not rank 0's batch only
            keys = sorted(result.losses)
            values = accelerator.reduce(torch.tensor([result.losses[k] for k in keys], device=device), "mean")
            result.losses = dict(zip(keys, values.tolist(), strict=True))
        if result.skipped:
            state.skipped_steps += 1
            logger.text(f"step {step}: non-finite loss or gradient, step skipped ({state.skipped_steps} so far)")
        elif ema is not None:
            ema.update()
        # Rates over all processes (each one trains a similar share).
        frames_per_s = result.frames * accelerator.num_processes / max(elapsed, 1e-9)
        utts_per_s = result.utterances * accelerator.num_processes / max(elapsed, 1e-9)
        last = {**result.losses, "lr": stage.schedulers["gen"].get_last_lr()[0], "frames_per_s": frames_per_s,
                "utts_per_s": utts_per_s, "skipped_steps": state.skipped_steps, "epoch": state.epoch}
        # metrics.jsonl gets every step; TensorBoard every log_every steps.
        logger.scalars(step, last, "train", tensorboard=step % cfg.log_every == 0 or step == 1)
        bar.update(1)
        bar.set_postfix(loss=f"{result.losses.get('total', float('nan')):.3f}", fps=f"{frames_per_s:.0f}",
                        skipped=state.skipped_steps)

        if val_batches and (step % cfg.val_every == 0 or step == cfg.max_steps):
            validate(stage, ema, val_batches, logger, step, cfg.num_samples, cfg.seed, accelerator, wer_check)
        accelerator.wait_for_everyone()
        if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
            state.sampler = sampler.state_dict(batches_consumed=state.batches_in_epoch)
            save_checkpoint(accelerator, run_dir, step, meta, tokenizer, cfg.keep_last)
            if halt_after is not None and step >= halt_after:
                os._exit(17)  # as if killed: no cleanup, no flush of anything not yet on disk
    bar.close()

    # --- export --------------------------------------------------------------------------------------------
    export = run_dir / "final"
    if is_main:
        with ema.swapped() if ema is not None and cfg.export_ema else nullcontext():
            model.save_pretrained(export)
        logger.text(f"exported {export} after {state.step} steps ({state.skipped_steps} skipped)")
    accelerator.wait_for_everyone()
    logger.close()
    return {"step": state.step, "skipped_steps": state.skipped_steps, "export": export, "last": last,
            "main_process": is_main}


def _tokenizer_of(init_from: str | None) -> str | None:
    if init_from and (Path(init_from) / "tokenizer.json").is_file():
        return init_from
    return None


def _data_pipeline(cfg: Any, model: LlamaVoice, tokenizer: TextTokenizer, is_main: bool,
                   accelerator: Any) -> tuple[Callable[[list], TTSDataset], Callable]:
    """(entries → dataset, collate function): audio, or cached VAE posteriors (``train.latent_cache``)."""
    if not cfg.latent_cache:
        def audio_dataset(entries: list) -> TTSDataset:
            return TTSDataset(entries, tokenizer, model.sample_rate, max_prompt_seconds=cfg.max_prompt_seconds,
                              min_prompt_seconds=min(1.0, cfg.max_prompt_seconds), seed=cfg.seed)
        return audio_dataset, collate

    cache = LatentCache(cfg.latent_cache, vae_cache_key(model))
    if is_main:
        entries = list(read_manifest(cfg.train_manifest)) + (list(read_manifest(cfg.val_manifest))
                                                              if cfg.val_manifest else [])
        encoded = fill_latent_cache(model, entries, cache)
        if encoded:
            log.info("encoded %d utterances into the latent cache %s", encoded, cfg.latent_cache)
    accelerator.wait_for_everyone()

    def latent_dataset(entries: list) -> LatentTTSDataset:
        return LatentTTSDataset(entries, tokenizer, cache, model.config.audio.latent_rate,
                                max_prompt_seconds=cfg.max_prompt_seconds,
                                min_prompt_seconds=min(1.0, cfg.max_prompt_seconds), seed=cfg.seed)
    return latent_dataset, collate_latents


def _validation_batches(cfg: Any, make_dataset: Callable, collate_fn: Callable) -> list[Any]:
    """A fixed list of validation batches (same items, prompts and order at every validation)."""
    if not cfg.val_manifest:
        return []
    entries = [e for e in read_manifest(cfg.val_manifest) if e.duration <= cfg.max_utterance_seconds]
    dataset = make_dataset(entries)
    sampler = DurationBatchSampler(dataset.durations, cfg.frame_budget_seconds, seed=cfg.seed, shuffle=False)
    batches = list(sampler)
    # Spread the chosen batches over the duration range instead of taking only the shortest ones.
    stride = max(1, len(batches) // max(1, cfg.val_batches))
    return [collate_fn([dataset[i] for i in b]) for b in batches[::stride][: cfg.val_batches]]


def _wer_check(cfg: Any) -> Any:
    """Whisper WER on ``train.eval_items`` held-out sentences, for every validation. Whisper loads
    here, so a missing [eval] extra stops the run before its first step, not at its first validation."""
    from llamavoice.eval.callback import EvalCallback
    from llamavoice.eval.lists import eval_list_from_manifests

    items = eval_list_from_manifests([cfg.val_manifest], max_items=cfg.eval_items, seed=cfg.seed)
    check = EvalCallback(items, every_steps=cfg.val_every, max_items=cfg.eval_items, metrics=("asr",),
                         seed=cfg.seed, sampling=cfg.eval_sampling)
    check.scorers.asr._load()
    return check


@torch.no_grad()
def _init_flow(model: LlamaVoice, dataset: TTSDataset, collate_fn: Callable, items: int = 8) -> None:
    """The flow's ActNorm data init on the posterior means of a few real utterances (before DDP
    wrapping, so rank 0's init is broadcast). Skipped when the weights already hold an init."""
    if model.flow.actnorm_initialized:
        return
    batch = collate_fn([dataset[i] for i in range(min(items, len(dataset)))])
    if isinstance(batch, Posteriors):
        mu, frames = batch.mu, batch.frames
    else:
        mu, _ = model.vae.encode(batch.audio)
        frames = model.vae.num_frames(batch.audio_lengths)
    model.flow.init_actnorm(mu[frame_mask(frames, mu.shape[1])])


@torch.no_grad()
def validate(stage: Stage, ema: EMA | None, batches: list[Batch], logger: RunLogger, step: int, num_samples: int,
             seed: int, accelerator: Any, wer_check: Any = None) -> dict[str, float]:
    """Validation losses and a few audio samples + mel plots, with the EMA weights when there are;
    with ``wer_check`` (an EvalCallback) also Whisper's WER on held-out sentences (split ``eval``).
    Then ``validation.png`` plots every validation so far.

    Runs under a forked RNG with a fixed seed: the numbers are comparable across validations and
    the training RNG stream is untouched (so a resumed run matches an uninterrupted one)."""
    model, device = stage.model, accelerator.device
    devices = [device.index or 0] if device.type == "cuda" else []
    totals: dict[str, float] = {}
    with torch.random.fork_rng(devices=devices), (ema.swapped() if ema is not None else nullcontext()):
        torch.manual_seed(seed)
        model.eval()
        with accelerator.autocast():
            for batch in batches:
                for k, v in stage.val_losses(batch.to(device)).items():
                    totals[k] = totals.get(k, 0.0) + v / len(batches)
            samples = log_samples(stage, batches[0].to(device), num_samples) if num_samples > 0 else []
        for name, wav, mels in samples:
            logger.audio(step, name, wav.float().cpu().numpy(), model.sample_rate,
                         {k: v.float().cpu().numpy() for k, v in mels.items()})
        figures: dict[str, float] = {}
        if wer_check is not None:  # through save → llamavoice.load: what an export of these weights would say
            figures = wer_check.evaluate(model, step)
            for error in wer_check.last_errors:
                logger.text(f"step {step}: WER check: {error}")
    stage.train()
    logger.scalars(step, totals, "val")
    if figures:
        logger.scalars(step, figures, "eval")
    logger.plot_validation()
    return totals
