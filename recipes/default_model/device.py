"""Train, export and ship the default model on the accelerator machine, one tool call at a time.

Run there through ``recipes/default_model/run_on_device.sh PHASE`` (which installs the carried
wheels first). Every call continues where the last one stopped:

    setup    unpack the carried corpus (.devpack: Opus -> 24 kHz PCM16 wavs), regenerate the voices
             whose engine travelled (hibari + pitch variants, recipes/data), write the manifests
    vae      train stage vae   } each for its time budget (--vae-seconds, ...), in as many calls as
    lm       train stage lm    } needed: exact --resume while the machine stays warm; a call stops
    joint    train stage joint } right after a checkpoint when the next one would not fit
    export   the newest weights -> fp16 save_pretrained + default voices + a synthesis check
    auto     all of the above in order, as far as this call's time allows (call it again)
    status   print the state

State lives in ``$LV_WORK`` (default /tmp/lvdev) on the machine: it survives between calls only
while the machine stays warm (30 s idle). So every call also returns, in ``$OUT``:

    state.json      the state (stages, steps, seconds, measured rates, losses)
    logs.tar.gz     this call's log, each stage's metrics.jsonl/train.log/config, newest samples
    kit.json + kit.partNN   the newest weights, fp16, split into <= 15 MiB parts (the export once
                    it exists; while stage vae runs only the VAE tensors)

``recipes/default_model/fetch.py`` reassembles the kit here. If a lease is lost, ``fetch.py
--stash`` puts the kit and state into ``.devstate/``; carried to a fresh machine, the next call
rebuilds the corpus and continues from those weights (a new run from ``train.init_from``; the
optimizer state is not carried).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from llamavoice.errors import LlamaVoiceError

STAGES = ("vae", "lm", "joint")
PREVIOUS = {"vae": None, "lm": "vae", "joint": "lm"}
# Optimizer steps per second of the small model with small-gpu.yaml (240 s of audio per batch, bf16,
# no compile) on one H100/H200: vae before the GAN joins (with it: / --gan-slowdown), lm, joint.
# ESTIMATES, not measurements (docs/default-model.md says how they were derived). A stage's first
# process measures the real rate for --calibrate-seconds and the driver re-plans with it.
RATE_ESTIMATES = {"vae": 6.0, "lm": 6.0, "joint": 2.0}
DEFAULT_BUDGETS = {"vae": 540.0, "lm": 600.0, "joint": 0.0}
STATE_VERSION = 1
MAX_OUT_BYTES = 63 * 2**20


class DeviceError(LlamaVoiceError):
    """Something the pipeline cannot continue from (a failed training process, missing inputs)."""


def now() -> float:
    return time.time()


class Driver:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.repo = Path(args.repo).resolve()
        self.work = Path(args.work)
        self.corpus = self.work / "corpus"
        self.runs = self.work / "runs"
        self.out = Path(args.out)
        self.pack = Path(args.pack) if Path(args.pack).is_absolute() else self.repo / args.pack
        carried = Path(args.carried_state)
        self.carried = carried if carried.is_absolute() else self.repo / carried
        config = Path(args.config)
        self.config = config if config.is_absolute() else self.repo / config
        start = float(os.environ.get("LV_CALL_START") or now())
        self.deadline = start + args.call_seconds - args.reserve_seconds
        self.call_log: list[str] = []
        self.work.mkdir(parents=True, exist_ok=True)
        self.state = self._load_state()
        # Budgets and train.py overrides stick: given once, later calls use them without repeating.
        settings = self.state.setdefault("settings", {})
        if args.budgets is not None:
            settings["budgets"] = {**DEFAULT_BUDGETS, **settings.get("budgets", {}), **args.budgets}
        if args.set:
            settings["set"] = list(args.set)
        self.budgets = {**DEFAULT_BUDGETS, **settings.get("budgets", {})}
        self.sets = list(settings.get("set", []))
        self.state["calls"].append({"phase": args.phase, "start": time.strftime("%Y-%m-%d %H:%M:%S")})

    # --- logging and state -------------------------------------------------------------------
    def log(self, message: str) -> None:
        line = f"[{time.strftime('%H:%M:%S')}] {message}"
        print(line, flush=True)
        self.call_log.append(line)
        with (self.work / "driver.log").open("a") as f:
            f.write(line + "\n")

    def remaining(self) -> float:
        return self.deadline - now()

    def save_state(self) -> None:
        tmp = self.work / "state.json.tmp"
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.work / "state.json")

    def _fresh_state(self) -> dict:
        return {
            "version": STATE_VERSION,
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "setup": {"done": False},
            "stages": {s: {"status": "pending", "step": 0, "seconds": 0.0, "processes": 0} for s in STAGES},
            "export": {"done": False},
            "restored": 0,
            "calls": [],
        }

    def _load_state(self) -> dict:
        path = self.work / "state.json"
        if path.is_file():
            return json.loads(path.read_text())
        carried = self.carried / "state.json"
        if carried.is_file():
            return self._restore(json.loads(carried.read_text()))
        if self.args.continue_:
            raise DeviceError(
                f"--continue: this machine has no state ({path} is missing) and no {carried} was carried, so the "
                "previous call's machine was given back (lease lost). Nothing was started. Fetch the previous "
                "call's files with fetch_from_device.sh FILES_AT --stash, re-pack, and call again "
                "(docs/default-model.md)"
            )
        return self._fresh_state()

    def _restore(self, state: dict) -> dict:
        """A fresh machine with a carried state + kit: continue from the kit's weights."""
        kit = self.carried / "kit"
        info = {}
        if (kit / "kit_info.json").is_file():
            info = json.loads((kit / "kit_info.json").read_text())
        state["restored"] = state.get("restored", 0) + 1
        state["setup"] = {"done": False}
        print(f"restoring from {self.carried} (kit: {info or 'none'})", flush=True)
        if not info:  # nothing to continue from: the stages start over, their seconds stay spent
            for s in STAGES:
                st = state["stages"][s]
                if st["status"] != "skipped":
                    st.update(status="pending", step=0, run_dir=None, weights=None)
            state["export"] = {"done": False}
            return state
        local = self.work / "restored" / f"kit-{state['restored']}"
        shutil.rmtree(local, ignore_errors=True)
        shutil.copytree(kit, local)
        if info.get("kind") == "export":
            shutil.rmtree(self.work / "export", ignore_errors=True)
            shutil.copytree(kit, self.work / "export")
            return state
        stage = info["stage"]
        order = list(STAGES)
        for s in order[: order.index(stage)]:  # earlier stages live inside the kit's weights
            state["stages"][s].update(status="done" if state["stages"][s]["status"] != "skipped" else "skipped",
                                      weights=None, run_dir=None)
        st = state["stages"][stage]
        if st["status"] == "done":
            st.update(weights=str(local), run_dir=None)
        else:
            st.update(status="running", run_dir=None, init_from=str(local), step_offset=int(info.get("step") or 0),
                      new_run=True)
        for s in order[order.index(stage) + 1 :]:
            if state["stages"][s]["status"] not in ("skipped",):
                state["stages"][s].update(status="pending", step=0, run_dir=None, weights=None)
        state["export"] = {"done": False}
        return state

    # --- setup ---------------------------------------------------------------------------------
    def setup(self) -> None:
        if self.state["setup"].get("done") and (self.corpus / "manifest_train.jsonl").is_file():
            return
        t0 = now()
        self.log(f"setup: unpacking {self.pack} into {self.corpus}")
        report = unpack_corpus(self.pack, self.corpus, self.args.workers, log=self.log)
        self.state["setup"] = {"done": True, "seconds": round(now() - t0, 1), **report}
        self.save_state()
        self.log(f"setup done in {now() - t0:.0f} s: {report['hours']}")

    # --- training --------------------------------------------------------------------------------
    def budget(self, stage: str) -> float:
        return self.budgets[stage]

    def fixed_steps(self, stage: str) -> int | None:
        return self.args.steps.get(stage)

    def stage_weights(self, stage: str) -> str | None:
        st = self.state["stages"][stage]
        return st.get("weights")

    def close_stage(self, stage: str) -> None:
        """Mark a stage done; its newest (EMA) weights become the next stage's init_from."""
        from recipes.default_model.kit import load_run_weights

        st = self.state["stages"][stage]
        if st["status"] in ("done", "skipped"):
            return
        run_dir = Path(st["run_dir"]) if st.get("run_dir") else None
        if run_dir is None or not (run_dir / "checkpoints").is_dir() and not (run_dir / "final").is_dir():
            if st.get("init_from"):  # restored, and no step was trained since: the kit is the weights
                st.update(status="done", weights=st["init_from"])
                self.save_state()
                return
            raise DeviceError(
                f"stage {stage} has no checkpoint to close after {st['seconds']:.0f} s of its "
                f"{self.budget(stage):.0f} s budget (measured {st.get('rate', '?')} steps/s, checkpoint every "
                f"{(st.get('plan') or {}).get('checkpoint_every', '?')} steps): give it more time with "
                f"--budgets {stage}=SECONDS and call again"
            )
        model, info = load_run_weights(run_dir)
        if info["source"].endswith("final"):
            weights = info["source"]
        else:
            weights = str(run_dir / "closed")
            shutil.rmtree(weights, ignore_errors=True)
            model.save_pretrained(weights)
        st.update(status="done", weights=weights, closed_from=info)
        self.save_state()
        self.log(f"stage {stage} closed at step {st['step']}: weights {weights}")

    def run_stage(self, stage: str) -> bool:
        """Train ``stage`` within this call. True when the stage is done."""
        st = self.state["stages"][stage]
        if st["status"] in ("done", "skipped"):
            return True
        if self.fixed_steps(stage) is None and self.budget(stage) <= 0:
            st["status"] = "skipped"
            self.save_state()
            self.log(f"stage {stage}: no time budget, skipped")
            return True
        prev = PREVIOUS[stage]
        if prev is not None and not st.get("init_from"):
            pst = self.state["stages"][prev]
            if pst["status"] == "skipped" and prev == "lm":
                raise DeviceError("stage joint needs stage lm")
            if pst["status"] != "done":
                self.close_stage(prev)
        self.setup()
        while True:
            # A process pays its start-up before it trains: start one only for >= min_chunk of training.
            startup = st.get("startup_s") or self.args.startup_seconds
            left_budget = math.inf if self.fixed_steps(stage) is not None else self.budget(stage) - st["seconds"]
            if left_budget - startup < self.args.min_chunk:
                self.log(f"stage {stage}: time budget spent ({st['seconds']:.0f} of {self.budget(stage):.0f} s)")
                self.close_stage(stage)
                return True
            if self.remaining() - startup < self.args.min_chunk:
                self.log(f"stage {stage}: {self.remaining():.0f} s left in this call; continue in the next call")
                return False
            finished = self.train_process(stage, min(self.deadline, now() + left_budget))
            if finished:
                self.close_stage(stage)
                return True

    def _plan(self, stage: str, st: dict, step: int) -> dict:
        """max_steps, warm-up, GAN start, checkpoint and validation spacing for the next process.

        max_steps is what the stage's remaining seconds allow at the measured rate (the estimate
        until a process has measured it), so the cosine schedule ends when the time budget does.
        Stage vae has two rates: before and after the GAN joins (the discriminators cost more)."""
        fixed = self.fixed_steps(stage)
        r1 = st.get("rate") or self.args.rates[stage]
        r2 = st.get("rate_gan") or r1 / self.args.gan_slowdown
        startup = st.get("startup_s") or self.args.startup_seconds
        f = self.args.disc_start_fraction
        disc_start = st.get("disc_start")
        gan_running = stage == "vae" and disc_start is not None and step >= disc_start
        if fixed is not None:
            max_steps, every, val_every = fixed, max(1, fixed // 2), fixed
            if stage == "vae" and not gan_running:
                disc_start = max(step, int(f * max_steps))
        else:
            left = max(0.0, self.budget(stage) - st["seconds"] - startup)
            if stage != "vae":
                max_steps = step + int(r1 * left)
            elif gan_running:
                max_steps = step + int(r2 * left)
            else:
                # Pre-GAN at r1 up to f * M, then GAN at r2: (f M - step)/r1 + (1 - f) M / r2 = left.
                max_steps = int((left + step / r1) / (f / r1 + (1 - f) / r2))
                disc_start = int(f * max_steps)
                if disc_start < step:  # too little time left for the planned share: GAN from now on
                    disc_start, max_steps = step, step + int(r2 * left)
            max_steps = max(step + 1, max_steps)
            rate_now = r2 if gan_running else r1
            # Until the rate is measured, checkpoint 3x as often: an optimistic estimate must not
            # leave the first process without any checkpoint when the call ends.
            spacing = self.args.checkpoint_seconds / (1 if st.get("rate") else 3)
            every = max(10, int(rate_now * spacing))
            val_every = max(every, int(rate_now * self.args.val_seconds))
        plan = {"max_steps": max_steps, "checkpoint_every": every, "val_every": val_every,
                "rate_used": r1, "rate_gan_used": r2 if stage == "vae" else None}
        if "warmup" not in st:  # fixed at the stage's first process
            st["warmup"] = max(5, min(1000, int(0.05 * max_steps)))
        plan["warmup"] = st["warmup"]
        if stage == "vae":
            st["disc_start"] = plan["disc_start"] = disc_start
        elif stage == "joint":
            plan["disc_start"] = 0
        return plan

    def _needs_calibration(self, stage: str, st: dict, step: int) -> bool:
        """A rate this stage plans with has not been measured yet (only with time budgets)."""
        if self.fixed_steps(stage) is not None or self.args.calibrate_seconds <= 0:
            return False
        if not st.get("rate"):
            return True
        return stage == "vae" and not st.get("rate_gan") and step > (st.get("disc_start") or 0)

    def train_process(self, stage: str, deadline: float) -> bool:
        """One ``recipes/train.py`` process for ``stage`` until it finishes or ``deadline``.
        Returns True when the stage reached its max_steps (and exported ``final/``)."""
        from llamavoice.train.checkpoint import list_checkpoints

        st = self.state["stages"][stage]
        if not st.get("run_dir") or st.get("new_run"):
            suffix = f"-r{self.state['restored']}" if self.state.get("restored") else ""
            st["run_dir"] = str(self.runs / f"{stage}{suffix}")
            st.pop("new_run", None)
        run_dir = Path(st["run_dir"])
        ckpts = list_checkpoints(run_dir)
        resume = bool(ckpts)
        step0 = ckpts[-1][0] if ckpts else 0
        plan = self._plan(stage, st, step0)
        sets = [
            f"train.stage={stage}",
            f"train.train_manifest={self.corpus / 'manifest_train.jsonl'}",
            f"train.val_manifest={self.corpus / 'manifest_heldout_sentences.jsonl'}",
            f"train.max_steps={plan['max_steps']}",
            f"train.warmup_steps={plan['warmup']}",
            f"train.checkpoint_every={plan['checkpoint_every']}",
            f"train.val_every={plan['val_every']}",
            "train.keep_last=2",
            "train.compile=false",  # every call restarts the process: compile warm-up would recur
        ]
        if "disc_start" in plan:
            sets.append(f"train.disc_start_step={plan['disc_start']}")
        if not resume:
            source = st.get("init_from") or (self.stage_weights(PREVIOUS[stage]) if PREVIOUS[stage] else None)
            if source:
                sets.append(f"train.init_from={source}")
        sets += self.sets  # the caller's --set last: they win
        cmd = [sys.executable, str(self.repo / "recipes" / "train.py"), "--config", str(self.config),
               "--run-dir", str(run_dir), "--no-progress"] + (["--resume"] if resume else [])
        for item in sets:
            cmd += ["--set", item]
        run_dir.mkdir(parents=True, exist_ok=True)
        truncate_metrics(run_dir / "metrics.jsonl", step0)  # rows past the checkpoint would fake progress
        self.log(f"stage {stage}: {'resume' if resume else 'start'} at step {step0}, max_steps {plan['max_steps']} "
                 f"(rate {plan['rate_used']:.2f}/s), checkpoint every {plan['checkpoint_every']}, "
                 f"{deadline - now():.0f} s for this process")
        st["status"] = "running"
        st["plan"] = plan
        self.save_state()
        t_spawn = now()
        with (run_dir / "stdout.log").open("a") as logf:
            logf.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n")
            logf.flush()
            proc = subprocess.Popen(cmd, cwd=str(self.repo), stdout=logf, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            samples: list[tuple[float, int]] = []
            last_ckpt, stopped = step0, None
            disc = plan.get("disc_start") if stage == "vae" else None
            restart_cost = 2 * (st.get("startup_s") or self.args.startup_seconds) + self.args.min_chunk
            while True:
                rc = proc.poll()
                t = now()
                step = last_metric_step(run_dir / "metrics.jsonl")
                if step is not None and step > step0 and (not samples or step > samples[-1][1]):
                    samples.append((t, step))
                if rc is not None:
                    break
                phase = phase_samples(samples, disc, gan=bool(samples) and disc is not None and samples[-1][1] > disc)
                rate = measured_rate(phase) or (plan["rate_gan_used"] if disc is not None and samples
                                                and samples[-1][1] > disc else plan["rate_used"])
                found = list_checkpoints(run_dir)
                ckpt = found[-1][0] if found else step0
                current = samples[-1][1] if samples else ckpt
                stopped = stop_reason(t, deadline, ckpt, last_ckpt, current, plan["max_steps"],
                                      plan["checkpoint_every"], rate, self.args.checkpoint_cost)
                if (not stopped and ckpt > last_ckpt and ckpt < plan["max_steps"] and len(phase) >= 2
                        and phase[-1][0] - phase[0][0] >= self.args.calibrate_seconds
                        and self._needs_calibration(stage, st, current)
                        and deadline - t > restart_cost):
                    stopped = f"after the checkpoint of step {ckpt} to re-plan with the measured rate ({rate:.2f}/s)"
                last_ckpt = max(last_ckpt, ckpt)
                if stopped:
                    stop_process_group(proc)
                    rc = proc.returncode
                    break
                time.sleep(self.args.poll_seconds)
        wall = now() - t_spawn
        found = list_checkpoints(run_dir)
        st["step"] = found[-1][0] if found else 0
        st["seconds"] = round(st["seconds"] + wall, 1)
        st["processes"] = st.get("processes", 0) + 1
        if samples:
            st["startup_s"] = round(samples[0][0] - t_spawn, 1)
            disc = plan.get("disc_start") if stage == "vae" else None
            for key, gan in (("rate", False), ("rate_gan", True)):
                if key == "rate_gan" and disc is None:
                    continue
                rate = measured_rate(phase_samples(samples, disc, gan))  # the newest 120 s: past warm-up
                if rate:
                    st[key] = round(rate, 4)
        st["last"] = last_metrics(run_dir / "metrics.jsonl")
        self.save_state()
        if stopped:
            self.log(f"stage {stage}: stopped {stopped}; resumable at step {st['step']} "
                     f"({st['seconds']:.0f} s of {self.budget(stage):.0f} s used, rate {st.get('rate', '?')}/s)")
            return False
        if rc != 0:
            tail = (run_dir / "stdout.log").read_text(errors="replace")[-3000:]
            raise DeviceError(f"training stage {stage} failed (exit {rc}); end of {run_dir}/stdout.log:\n{tail}")
        done = st["step"] >= plan["max_steps"] and (run_dir / "final" / "model.safetensors").is_file()
        self.log(f"stage {stage}: process ended at step {st['step']} in {wall:.0f} s"
                 f"{' (stage finished)' if done else ''}")
        return done

    # --- export ------------------------------------------------------------------------------------
    def export(self) -> bool:
        if self.state["export"].get("done") and (self.work / "export" / "config.json").is_file():
            return True
        from llamavoice.models.llamavoice import LlamaVoice
        from recipes.default_model.kit import encode_default_voices, verify_model, write_weights

        if self.remaining() < self.args.export_seconds:
            self.log(f"export: {self.remaining():.0f} s left in this call; export in the next call")
            return False
        stages = [s for s in STAGES if self.state["stages"][s]["status"] not in ("pending", "skipped")]
        if not stages or stages[-1] == "vae":
            raise DeviceError("export: stage lm has not run; the model could not speak (run lm first)")
        last = stages[-1]
        self.close_stage(last)
        self.setup()  # voice clips come from the corpus
        t0 = now()
        model = LlamaVoice.from_pretrained(self.stage_weights(last))
        steps = {s: self.state["stages"][s].get("step_offset", 0) + self.state["stages"][s]["step"] for s in STAGES}
        export = self.work / "export"
        write_weights(model, export, {"kind": "export", "stage": last, "steps": steps})
        device = self.args.device
        voices = encode_default_voices(export, self.corpus, device=device)
        logs = self.work / "export_logs"
        logs.mkdir(exist_ok=True)
        check = verify_model(export, device=device, wav_out=logs / "verify_default.wav",
                             max_seconds=self.args.verify_max_seconds)
        summary = {
            "stages": {s: {k: self.state["stages"][s].get(k) for k in ("status", "step", "step_offset", "seconds",
                                                                       "rate", "last", "plan")} for s in STAGES},
            "corpus": self.state["setup"].get("hours"),
            "voices": voices, "verify": check, "config": str(self.config.relative_to(self.repo))
            if self.config.is_relative_to(self.repo) else str(self.config), "overrides": self.sets,
        }
        (export / "training_summary.json").write_text(json.dumps(summary, indent=1))
        self.state["export"] = {"done": True, "seconds": round(now() - t0, 1), "verify": check,
                                "voices": [v["voice"] for v in voices if "skipped" not in v]}
        self.save_state()
        self.log(f"export done: {check}")
        return True

    # --- end of every call: state, logs and the newest weights into $OUT -------------------------------
    def finish(self) -> None:
        from recipes.default_model.kit import load_run_weights, pack_kit, write_weights

        self.out.mkdir(parents=True, exist_ok=True)
        kit_dir = None
        if self.state["export"].get("done"):
            kit_dir = self.work / "export"
        else:
            active = [s for s in STAGES if self.state["stages"][s]["status"] in ("running", "done")]
            if active:
                s = active[-1]
                st = self.state["stages"][s]
                source = None
                if st.get("run_dir") and Path(st["run_dir"]).is_dir() and (
                        (Path(st["run_dir"]) / "checkpoints").is_dir() or (Path(st["run_dir"]) / "final").is_dir()):
                    model, info = load_run_weights(st["run_dir"])
                    source = info
                elif st.get("weights") or st.get("init_from"):
                    from llamavoice.models.llamavoice import LlamaVoice
                    path = st.get("weights") or st.get("init_from")
                    if (Path(path) / "kit_info.json").is_file() and json.loads(
                            (Path(path) / "kit_info.json").read_text()).get("tensors") != "all":
                        model = None  # a VAE-only kit: pass it on unchanged
                        kit_dir = Path(path)
                    else:
                        model, source = LlamaVoice.from_pretrained(path), {"source": path}
                if source is not None:
                    kit_dir = self.work / "kit"
                    step = st.get("step_offset", 0) + st["step"]
                    write_weights(model, kit_dir, {"kind": "stage", "stage": s, "step": step, "status": st["status"],
                                                   "from": source},
                                  prefixes=["vae."] if s == "vae" else None)
        if kit_dir is not None:
            record = pack_kit(kit_dir, self.out)
            self.log(f"kit: {record['info'].get('kind')} {record['info'].get('stage', '')} "
                     f"{record['size'] / 2**20:.1f} MiB in {len(record['parts'])} part(s)")
        self.save_state()
        shutil.copyfile(self.work / "state.json", self.out / "state.json")
        self._write_logs()
        files = sorted(p for p in self.out.iterdir() if p.is_file())
        total = sum(p.stat().st_size for p in files)
        if len(files) > 8 or total > MAX_OUT_BYTES:
            self.log(f"WARNING: $OUT holds {len(files)} files, {total / 2**20:.1f} MiB (limit 8 files, 64 MiB)")

    def _write_logs(self) -> None:
        (self.work / "call.log").write_text("\n".join(self.call_log) + "\n")
        budget = 4 * 2**20
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(self.work / "call.log", arcname="call.log")
            tar.add(self.work / "state.json", arcname="state.json")
            if (self.work / "driver.log").is_file():
                tar.add(self.work / "driver.log", arcname="driver.log")
            for s in STAGES:
                run = self.state["stages"][s].get("run_dir")
                if not run or not Path(run).is_dir():
                    continue
                run = Path(run)
                for name in ("metrics.jsonl", "train.log", "config.yaml", "config.resume.yaml"):
                    if (run / name).is_file():
                        tar.add(run / name, arcname=f"{s}/{name}")
                if (run / "stdout.log").is_file():
                    tail = (run / "stdout.log").read_bytes()[-200_000:]
                    (self.work / f"{s}_stdout_tail.log").write_bytes(tail)
                    tar.add(self.work / f"{s}_stdout_tail.log", arcname=f"{s}/stdout_tail.log")
                sample_dirs = sorted((run / "samples").glob("step_*")) if (run / "samples").is_dir() else []
                if sample_dirs and sum(p.stat().st_size for p in sample_dirs[-1].iterdir()) < budget:
                    tar.add(sample_dirs[-1], arcname=f"{s}/samples/{sample_dirs[-1].name}")
            for path in ((self.work / "export_logs"), (self.work / "export" / "training_summary.json"),
                         (self.work / "export" / "voices" / "voices.json")):
                if path.exists():
                    tar.add(path, arcname=f"export/{path.name}")

    def next_step(self) -> str:
        """What the following call should do, for the last line of the output."""
        if self.state["export"].get("done"):
            return "done; fetch the files with: bash recipes/default_model/fetch_from_device.sh FILES_AT"
        if not self.state["setup"].get("done"):
            phase = "setup"
        else:
            pending = [s for s in STAGES if self.state["stages"][s]["status"] not in ("done", "skipped")
                       and (self.fixed_steps(s) is not None or self.budget(s) > 0)]
            phase = pending[0] if pending else "export"
        return (f"call again: bash recipes/default_model/run_on_device.sh auto --continue "
                f"(next: {phase}; or the phase alone: ... run_on_device.sh {phase} --continue)")

    def summary(self) -> str:
        lines = []
        su = self.state["setup"]
        lines.append(f"setup: {'done' if su.get('done') else 'pending'}"
                     + (f" ({su.get('hours')})" if su.get("done") else ""))
        for s in STAGES:
            st = self.state["stages"][s]
            last = st.get("last") or {}
            loss = {k: round(v, 4) for k, v in last.items() if k in ("total", "mel", "kl", "stop") and
                    isinstance(v, (int, float))}
            lines.append(f"{s}: {st['status']}, step {st.get('step_offset', 0) + st['step']}"
                         f"/{(st.get('plan') or {}).get('max_steps', '?')}, {st['seconds']:.0f}/"
                         f"{self.budget(s):.0f} s, rate {st.get('rate', '?')}/s, {loss}")
        export = self.state["export"]
        lines.append("export: " + (f"done {json.dumps(export.get('verify'))}" if export.get("done") else "pending"))
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def last_metric_step(path: Path) -> int | None:
    """The step of the newest training row of metrics.jsonl (reads only the file's tail)."""
    row = _last_row(path)
    return int(row["step"]) if row else None


def last_metrics(path: Path) -> dict:
    return _last_row(path) or {}


def _last_row(path: Path, split: str = "train") -> dict | None:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 16384))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("split") == split:
            return row
    return None


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics rows after ``step`` (a killed process logged steps its checkpoint lacks); the
    training loop does the same on resume, but only once it has loaded the model."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    path.write_text("".join(line + "\n" for line in kept))


def measured_rate(samples: list[tuple[float, int]], window: float = 120.0) -> float | None:
    """Steps per second over the newest ``window`` seconds of (time, step) observations."""
    if len(samples) < 2:
        return None
    t_end, s_end = samples[-1]
    first = next(((t, s) for t, s in samples if t_end - t <= window), samples[0])
    if first == samples[-1]:
        first = samples[-2]
    dt = t_end - first[0]
    return (s_end - first[1]) / dt if dt >= 5.0 else None


def phase_samples(samples: list[tuple[float, int]], disc_start: int | None, gan: bool) -> list[tuple[float, int]]:
    """The observations before (``gan=False``) or after the GAN joined at ``disc_start``; all of
    them when there is no GAN in the stage."""
    if disc_start is None:
        return samples if not gan else []
    return [x for x in samples if (x[1] > disc_start + 1) == gan]


def stop_reason(t: float, deadline: float, ckpt: int, last_ckpt: int, step: int, max_steps: int, every: int,
                rate: float, checkpoint_cost: float) -> str | None:
    """Why a training process should stop now, or None. Past the deadline it stops anyway (the steps
    since the last checkpoint are lost); right after a new checkpoint it stops if the next one
    would not be written before the deadline, so a call rarely loses any step."""
    if t >= deadline:
        return "at the deadline"
    if ckpt > last_ckpt and ckpt < max_steps:
        next_ckpt = min(max_steps, ckpt + every)
        if t + (next_ckpt - step) / max(rate, 1e-6) + checkpoint_cost > deadline:
            return f"after the checkpoint of step {ckpt} (the next would come after the deadline)"
    return None


def stop_process_group(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the training process's own group (it and its data-loader workers), then SIGKILL."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _decode_task(task: tuple[str, int, int, str]) -> tuple[str, float | None, str]:
    import io

    import soundfile as sf

    blob, off, length, dst = task
    try:
        with open(blob, "rb") as f:
            f.seek(off)
            audio, sr = sf.read(io.BytesIO(f.read(length)), dtype="float32")
        path = Path(dst)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".{os.getpid()}.part")
        sf.write(str(tmp), audio, sr, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
        return dst, len(audio) / sr, ""
    except Exception as exc:  # reported per file; one bad clip must not stop the setup
        return dst, None, f"{type(exc).__name__}: {exc}"


def unpack_corpus(pack: Path, corpus: Path, workers: int, log=print) -> dict:
    """Rebuild a corpus directory from a pack: decode the Opus clips, regenerate the rest, write
    manifests with the measured durations (only utterances whose wav exists)."""
    import gzip
    import multiprocessing as mp

    import soundfile as sf

    from llamavoice.data.manifest import ManifestEntry, write_manifest
    from recipes.default_model.pack import BLOB, INDEX, MANIFESTS, META

    if not (pack / META).is_file():
        raise DeviceError(f"no corpus pack at {pack}: run recipes/default_model/pack_for_device.sh here and carry it")
    meta = json.loads((pack / META).read_text())
    rows = [json.loads(line) for line in gzip.decompress((pack / INDEX).read_bytes()).decode().splitlines() if line]
    corpus.mkdir(parents=True, exist_ok=True)

    def ok(path: Path) -> bool:
        try:
            info = sf.info(str(path))
        except Exception:
            return False
        return info.frames > 0 and info.subtype == "PCM_16"

    t0 = now()
    todo = [(str(pack / BLOB), r["off"], r["len"], str(corpus / r["audio"])) for r in rows
            if r["src"] == "opus" and not ok(corpus / r["audio"])]
    failed = []
    if todo:
        if workers > 1:
            with mp.get_context("spawn").Pool(workers) as pool:
                results = list(pool.imap_unordered(_decode_task, todo, chunksize=64))
        else:
            results = [_decode_task(t) for t in todo]
        failed += [{"audio": d, "error": e} for d, dur, e in results if dur is None]
    log(f"setup: decoded {len(todo)} Opus clips in {now() - t0:.0f} s ({len(failed)} failed)")
    regen = [r for r in rows if r["src"] == "regen"]
    if regen:
        from recipes.data import build_corpus as bc
        from recipes.data import voices as vc

        specs = {n: vc.VoiceSpec(**d) for n, d in meta["regen"]["speakers"].items()}
        jobs = [{"utt_id": Path(r["audio"]).stem, "audio": r["audio"], "text": r["text"], "speaker": r["speaker"],
                 "split": r["split"]} for r in regen]
        t1 = now()
        result = bc.run_jobs(corpus, jobs, specs, int(meta["seed"]), workers, desc="regenerating", progress=False)
        failed += [{"audio": f["utt_id"], "error": f["error"]} for f in result["failed"]]
        log(f"setup: regenerated {result['rendered']} clips ({result['audio_seconds_rendered'] / 3600:.2f} h) "
            f"in {now() - t1:.0f} s, {len(result['failed'])} failed, {result['skipped_existing']} already there")
    hours: dict[str, float] = {}
    for split, name in MANIFESTS.items():
        entries = []
        for r in rows:
            if r["split"] != split:
                continue
            path = corpus / r["audio"]
            try:
                info = sf.info(str(path))
            except Exception:
                continue
            entries.append(ManifestEntry(str(path), r["text"], r["speaker"], round(info.frames / info.samplerate, 3),
                                         info.samplerate))
        write_manifest(corpus / name, entries)
        hours[split] = round(sum(e.duration for e in entries) / 3600, 3)
    if not hours.get("train"):
        raise DeviceError(f"setup produced no training audio ({len(failed)} failures, e.g. {failed[:2]})")
    return {"hours": hours, "failed": len(failed), "failures": failed[:20]}


def _parse_map(text: str, kind) -> dict:
    out = {}
    for item in filter(None, (text or "").split(",")):
        key, _, value = item.partition("=")
        if key not in STAGES:
            raise argparse.ArgumentTypeError(f"unknown stage {key!r} in {text!r}")
        out[key] = kind(value)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m recipes.default_model.device", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("phase", choices=("setup", *STAGES, "export", "auto", "status"))
    ap.add_argument("--work", default=os.environ.get("LV_WORK", "/tmp/lvdev"), help="state, corpus and runs")
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="what comes back (default: $OUT)")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[2]))
    ap.add_argument("--pack", default=".devpack", help="carried corpus pack (relative to --repo)")
    ap.add_argument("--carried-state", default=".devstate", help="carried state + kit after a lost lease")
    ap.add_argument("--config", default="recipes/configs/small-gpu.yaml")
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra train.py overrides (applied last; kept for later calls)")
    ap.add_argument("--call-seconds", type=float, default=570.0, help="this call's wall-clock budget")
    ap.add_argument("--reserve-seconds", type=float, default=30.0, help="kept at the end for the kit and logs")
    ap.add_argument("--budgets", type=lambda s: _parse_map(s, float), default=None,
                    help="training seconds per stage, e.g. vae=540,lm=600,joint=0 (default "
                         f"{','.join(f'{k}={v:g}' for k, v in DEFAULT_BUDGETS.items())}; kept for later calls)")
    ap.add_argument("--continue", dest="continue_", action="store_true",
                    help="refuse to start from scratch: this call must continue the state on the machine "
                         "(or a carried .devstate); use it for every call after the first")
    ap.add_argument("--rates", type=lambda s: {**RATE_ESTIMATES, **_parse_map(s, float)}, default=RATE_ESTIMATES,
                    help="steps/s to assume before a stage has measured its own")
    ap.add_argument("--steps", type=lambda s: _parse_map(s, int), default={},
                    help="fixed max_steps per stage instead of time budgets (tests), e.g. vae=4,lm=4")
    ap.add_argument("--min-chunk", type=float, default=90.0, help="no process is started for less than this")
    ap.add_argument("--startup-seconds", type=float, default=45.0,
                    help="a training process's start-up (imports, data, CUDA) until a stage has measured its own")
    ap.add_argument("--checkpoint-seconds", type=float, default=45.0, help="checkpoint spacing in seconds of training")
    ap.add_argument("--checkpoint-cost", type=float, default=8.0, help="seconds one checkpoint is assumed to take")
    ap.add_argument("--val-seconds", type=float, default=240.0, help="validation spacing in seconds of training")
    ap.add_argument("--disc-start-fraction", type=float, default=0.35, help="stage vae: GAN from this fraction on")
    ap.add_argument("--gan-slowdown", type=float, default=2.5,
                    help="stage vae: assumed rate without GAN / rate with GAN until measured (an estimate)")
    ap.add_argument("--calibrate-seconds", type=float, default=60.0,
                    help="a stage's first process stops after this much measured training (at a checkpoint) so "
                         "the next one plans max_steps with the measured rate (0: never)")
    ap.add_argument("--export-seconds", type=float, default=60.0, help="time the export needs")
    ap.add_argument("--verify-max-seconds", type=float, default=None, help="cap of the check sentence's length")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes for the corpus setup")
    ap.add_argument("--device", default="cuda" if shutil.which("nvidia-smi") else "cpu",
                    help="where voices are encoded and the export is checked")
    ap.add_argument("--poll-seconds", type=float, default=2.0)
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = str(Path(args.work) / "out")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        driver = Driver(args)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", flush=True)
        return 4
    rc = 0
    try:
        if args.phase == "status":
            print(driver.summary())
            return 0
        if args.phase == "setup":
            driver.setup()
        elif args.phase in STAGES:
            driver.run_stage(args.phase)
        elif args.phase == "export":
            driver.export()
        elif args.phase == "auto":
            driver.setup()
            for stage in STAGES:
                if not driver.run_stage(stage):
                    break
            else:
                driver.export()
    except LlamaVoiceError as exc:
        driver.log(f"error: {exc}")
        rc = 1
    finally:
        driver.save_state()
    try:
        driver.finish()
    except LlamaVoiceError as exc:
        driver.log(f"error while writing $OUT: {exc}")
        rc = rc or 1
    print(driver.summary(), flush=True)
    print("NEXT: " + driver.next_step(), flush=True)
    return rc


if __name__ == "__main__":
    sys.exit(main())
