"""Pack the offline corpus for the accelerator machine (runs here, not there).

The accelerator tool carries at most 64 MiB (working tree included) and the corpus is 1.7 GB of
PCM. So:

* speakers whose engine runs there (hibari: a 14 MB wheel) are *regenerated* there from their
  text and per-utterance seed (same plan, same seeds): only their text travels;
* every other speaker (piper/joe, kokoro, festival, flite, espeak: engines that cannot travel)
  travels as Ogg/Opus, one file per utterance, concatenated into ``audio.bin`` with an index
  (``index.jsonl.gz``: offset and length of each file), until the byte budget is used up. Held-out
  speakers and held-out sentences go first (voices and validation need them), then training
  utterances interleaved so each speaker keeps the same share of its hours.

``meta.json`` records what was packed, the bit rates, the sizes and a quality check of the
compression (decoded vs original: PESQ wide-band on a few clips, exact length, finite samples).

    python -m recipes.default_model.pack --corpus /work/corpus --out .devpack --max-mib 60 \\
        --also .whl [--pesq 10]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from llamavoice.data.manifest import DatasetError
from llamavoice.errors import ConfigError, LlamaVoiceError

PACK_VERSION = 1
SAMPLE_RATE = 24000
MANIFESTS = {  # split -> file name (as written by recipes/data/build_corpus.py)
    "heldout_speakers": "manifest_heldout_speakers.jsonl",
    "heldout_sentences": "manifest_heldout_sentences.jsonl",
    "train": "manifest_train.jsonl",
}
# libsndfile's Opus "compression level" sets the bit rate. Measured on this corpus (10 clips of
# 10 speakers, PESQ wide-band of decoded vs original): 0.97 -> 17 kbps, PESQ 3.87 (min 2.99);
# 0.95 -> 21 kbps, 4.25 (min 3.68); 0.93 -> 26 kbps, 4.36; 0.90 -> 33 kbps, 4.42.
DEFAULT_LEVELS = {"high": 0.95, "mid": 0.95, "low": 0.97}
INDEX, BLOB, META = "index.jsonl.gz", "audio.bin", "meta.json"
MiB = 2**20


def dir_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def tree_bytes(repo: Path) -> int:
    """Bytes of what the device tool sends besides carried paths: tracked files plus untracked
    files git does not ignore (plus a shared/ folder inside the checkout, which these are)."""
    try:
        out = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "-co", "--exclude-standard"],
                             capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ConfigError(f"cannot list the files of {repo} with git ({exc}); pass --tree-bytes") from exc
    total = 0
    for name in out.decode().split("\0"):
        path = repo / name
        if name and path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def read_rows(corpus: Path) -> list[dict]:
    rows = []
    for split, name in MANIFESTS.items():
        path = corpus / name
        if not path.is_file():
            raise DatasetError(f"{path} not found: point --corpus at a corpus built by recipes/data/build_corpus.py")
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                rows.append({"audio": r["audio"], "text": r["text"], "speaker": r["speaker"], "split": split,
                             "duration": float(r["duration"])})
    return rows


def _hash_key(text: str) -> bytes:
    return hashlib.sha1(text.encode()).digest()


def priority_order(rows: list[dict]) -> list[dict]:
    """Held-out speakers, held-out sentences, then training rows interleaved by speaker so that a
    budget cut anywhere keeps about the same fraction of every speaker's hours."""
    head = [r for split in ("heldout_speakers", "heldout_sentences") for r in rows if r["split"] == split]
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["split"] == "train":
            by_speaker[r["speaker"]].append(r)
    keyed = []
    for items in by_speaker.values():
        items.sort(key=lambda r: _hash_key(r["audio"]))  # a fixed shuffle: no bias from manifest order
        total = sum(r["duration"] for r in items)
        done = 0.0
        for r in items:
            keyed.append((done / total, _hash_key(r["audio"]), r))
            done += r["duration"]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return head + [k[2] for k in keyed]


def encode_opus(path: Path, level: float) -> bytes:
    import soundfile as sf

    audio, sr = sf.read(str(path), dtype="float32")
    if sr != SAMPLE_RATE or audio.ndim != 1:
        raise DatasetError(f"{path}: expected {SAMPLE_RATE} Hz mono, got {sr} Hz, shape {audio.shape}")
    buf = io.BytesIO()
    sf.write(buf, audio, sr, format="OGG", subtype="OPUS", compression_level=level)
    return buf.getvalue()


def _encode_task(task: tuple[str, float]) -> bytes:
    return encode_opus(Path(task[0]), task[1])


def check_quality(corpus: Path, out: Path, packed: list[dict], n_pesq: int, n_check: int) -> dict:
    """Decode packed clips back from ``audio.bin`` and compare them with the originals."""
    import numpy as np
    import soundfile as sf

    try:
        from pesq import pesq
    except ImportError:
        pesq = None
    by_speaker: dict[str, list[dict]] = defaultdict(list)
    for r in packed:
        by_speaker[r["speaker"]].append(r)
    order = []  # round-robin over speakers, each speaker's rows in a fixed shuffled order
    queues = {s: sorted(v, key=lambda r: _hash_key("q" + r["audio"])) for s, v in sorted(by_speaker.items())}
    while any(queues.values()) and len(order) < max(n_pesq, n_check):
        for s in list(queues):
            if queues[s]:
                order.append(queues[s].pop(0))
    results, pesq_scores = [], []
    blob = (out / BLOB).open("rb")
    try:
        for i, r in enumerate(order):
            blob.seek(r["off"])
            decoded, sr = sf.read(io.BytesIO(blob.read(r["len"])), dtype="float32")
            original, _ = sf.read(str(corpus / r["audio"]), dtype="float32")
            entry = {"speaker": r["speaker"], "same_length": len(decoded) == len(original),
                     "finite": bool(np.isfinite(decoded).all()), "kbps": round(r["len"] * 8 / r["duration"] / 1000, 1)}
            if pesq is not None and i < n_pesq:
                m = min(len(decoded), len(original))
                ref, deg = _to_16k(original[:m]), _to_16k(decoded[:m])
                entry["pesq_wb"] = round(float(pesq(16000, ref, deg, "wb")), 3)
                pesq_scores.append(entry["pesq_wb"])
            results.append(entry)
    finally:
        blob.close()
    summary = {
        "checked": len(results),
        "all_same_length": all(e["same_length"] for e in results),
        "all_finite": all(e["finite"] for e in results),
        "clips": [e for e in results if "pesq_wb" in e],
    }
    if pesq_scores:
        summary["pesq_wb_mean"] = round(float(np.mean(pesq_scores)), 3)
        summary["pesq_wb_min"] = round(float(np.min(pesq_scores)), 3)
        per: dict[str, list[float]] = defaultdict(list)
        for e in results:
            if "pesq_wb" in e:
                per[e["speaker"]].append(e["pesq_wb"])
        summary["pesq_wb_by_speaker"] = {k: round(float(np.mean(v)), 3) for k, v in sorted(per.items())}
    elif pesq is None:
        summary["pesq"] = "not measured: pip install pesq"
    return summary


def _to_16k(x):
    from math import gcd

    import numpy as np

    try:
        from scipy.signal import resample_poly

        g = gcd(SAMPLE_RATE, 16000)
        return resample_poly(x, 16000 // g, SAMPLE_RATE // g).astype(np.float32)
    except ImportError:
        import torch
        import torchaudio.functional as taf

        return taf.resample(torch.from_numpy(x), SAMPLE_RATE, 16000).numpy()


def pack(corpus: Path, out: Path, max_bytes: int, fixed_bytes: int, levels: dict[str, float],
         regen_engines: set[str], workers: int = 1, n_pesq: int = 10, n_check: int = 40,
         progress: bool = True) -> dict:
    """Write ``out`` (meta.json, index.jsonl.gz, audio.bin) within ``max_bytes - fixed_bytes``."""
    plan_path = corpus / "plan.json"
    if not plan_path.is_file():
        raise DatasetError(f"{plan_path} not found: the pack needs the corpus plan (voices and seed)")
    plan = json.loads(plan_path.read_text())
    specs, seed = plan["speakers"], int(plan["config"]["seed"])
    rows = read_rows(corpus)
    unknown = sorted({r["speaker"] for r in rows} - set(specs))
    if unknown:
        raise DatasetError(f"speakers {unknown} are in the manifests but not in {plan_path}")
    regen = {name for name, spec in specs.items() if spec["engine"] in regen_engines}
    regen_rows = [dict(r, src="regen") for r in rows if r["speaker"] in regen]
    candidates = priority_order([r for r in rows if r["speaker"] not in regen])

    # The index is written last; reserve its size (gzip of every row with offsets) up front.
    sample = "".join(json.dumps(dict(r, src="opus", off=10**9, len=10**5)) + "\n" for r in rows)
    index_reserve = len(gzip.compress(sample.encode())) + 64 * 1024
    audio_budget = max_bytes - fixed_bytes - index_reserve - 16 * 1024
    if audio_budget <= 0:
        raise ConfigError(
            f"nothing left for audio: the tree and other carried files take {fixed_bytes / MiB:.1f} MiB of "
            f"{max_bytes / MiB:.1f} MiB"
        )
    out.mkdir(parents=True, exist_ok=True)
    for name in (INDEX, BLOB, META):
        (out / name).unlink(missing_ok=True)
    packed: list[dict] = []
    offset = 0
    t0 = time.time()
    tasks = [(str(corpus / r["audio"]), levels.get(specs[r["speaker"]].get("quality", "mid"), levels["mid"]))
             for r in candidates]
    pool = None
    if workers > 1:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(workers)
        encoded = pool.imap(_encode_task, tasks, chunksize=8)
    else:
        encoded = map(_encode_task, tasks)
    try:
        with (out / BLOB).open("wb") as blob:
            for i, (r, data) in enumerate(zip(candidates, encoded, strict=False)):
                if offset + len(data) > audio_budget:
                    break
                blob.write(data)
                packed.append(dict(r, src="opus", off=offset, len=len(data)))
                offset += len(data)
                if progress and (i + 1) % 1000 == 0:
                    print(f"  {i + 1} clips, {offset / MiB:.1f} MiB, {time.time() - t0:.0f} s", flush=True)
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    encode_s = time.time() - t0
    index_rows = regen_rows + packed
    (out / INDEX).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in index_rows).encode()))

    def hours(items):
        return round(sum(r["duration"] for r in items) / 3600, 4)

    speakers = {}
    for name in sorted({r["speaker"] for r in rows}):
        mine = [r for r in rows if r["speaker"] == name]
        kept = [r for r in index_rows if r["speaker"] == name]
        opus_bytes = sum(r.get("len", 0) for r in kept)
        rate = {"mib": round(opus_bytes / MiB, 2),
                "kbps": round(opus_bytes * 8 / max(1e-9, hours(kept) * 3600) / 1000, 1)}
        speakers[name] = {
            "engine": specs[name]["engine"], "quality": specs[name].get("quality"),
            "how": "regenerated on the device" if name in regen else "opus",
            "hours_in_corpus": hours(mine), "hours_packed": hours(kept),
            "utterances": len(kept), "of": len(mine),
            **(rate if name not in regen else {}),
        }
    meta = {
        "version": PACK_VERSION, "sample_rate": SAMPLE_RATE, "seed": seed, "source": str(corpus),
        "regen": {"engines": sorted(regen_engines), "speakers": {n: specs[n] for n in sorted(regen)}},
        "opus_levels": levels, "encode_seconds": round(encode_s, 1),
        "hours": {
            "packed_opus": hours(packed), "regenerated": hours(regen_rows),
            "total": hours(index_rows), "corpus": hours(rows),
            "train": hours([r for r in index_rows if r["split"] == "train"]),
            "corpus_train": hours([r for r in rows if r["split"] == "train"]),
        },
        "speakers": speakers,
        "sizes_mib": {"audio": round(offset / MiB, 2), "index": round((out / INDEX).stat().st_size / MiB, 2),
                      "other_carried": round(fixed_bytes / MiB, 2), "limit": round(max_bytes / MiB, 2)},
    }
    meta["quality"] = check_quality(corpus, out, packed, n_pesq, n_check) if packed else {}
    (out / META).write_text(json.dumps(meta, indent=1))
    meta["sizes_mib"]["pack"] = round(dir_bytes(out) / MiB, 2)
    meta["sizes_mib"]["total"] = round((dir_bytes(out) + fixed_bytes) / MiB, 2)
    (out / META).write_text(json.dumps(meta, indent=1))
    return meta


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recipes.default_model.pack", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", type=Path, default=Path("/work/corpus"))
    ap.add_argument("--out", type=Path, default=Path(".devpack"))
    ap.add_argument("--max-mib", type=float, default=60.0, help="everything that travels, tree included")
    ap.add_argument("--also", type=Path, action="append", default=[],
                    help="other carried paths counted against the limit (.whl, .devstate)")
    ap.add_argument("--repo", type=Path, default=Path("."), help="checkout whose tree travels")
    ap.add_argument("--tree-bytes", type=int, default=None, help="size of the tree (default: measured with git)")
    ap.add_argument("--level-high", type=float, default=DEFAULT_LEVELS["high"],
                    help="Opus compression level for 'high'/'mid' quality voices (lower = more kbps)")
    ap.add_argument("--level-low", type=float, default=DEFAULT_LEVELS["low"], help="... for 'low' quality voices")
    ap.add_argument("--regen-engines", default="hibari",
                    help="comma-separated engines regenerated on the device instead of packed ('' for none)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pesq", type=int, default=10, help="clips whose PESQ (decoded vs original) is measured")
    ap.add_argument("--check", type=int, default=40, help="clips decoded back and checked for length")
    ap.add_argument("--measure-only", action="store_true",
                    help="re-run the quality check of an existing pack (with --pesq/--check) and update meta.json")
    ap.add_argument("--size-only", action="store_true",
                    help="only measure what would travel now (e.g. after copying .whl/.devpack into another checkout)")
    args = ap.parse_args(argv)
    try:
        tree = args.tree_bytes if args.tree_bytes is not None else tree_bytes(args.repo)
        also = sum(dir_bytes(p) for p in args.also)
        if args.size_only:
            total = (tree + also + dir_bytes(args.out)) / MiB
            print(f"sizes (MiB): tree {tree / MiB:.2f}, {' + '.join(str(p) for p in args.also) or 'nothing else'} "
                  f"{also / MiB:.2f}, {args.out} {dir_bytes(args.out) / MiB:.2f}; total {total:.2f} of {args.max_mib}")
            return 0 if total <= args.max_mib else 3
        if args.measure_only:
            meta = json.loads((args.out / META).read_text())
            rows = [json.loads(x) for x in gzip.decompress((args.out / INDEX).read_bytes()).decode().splitlines() if x]
            meta["quality"] = check_quality(args.corpus, args.out, [r for r in rows if r["src"] == "opus"],
                                            args.pesq, args.check)
            (args.out / META).write_text(json.dumps(meta, indent=1))
            print(json.dumps({k: v for k, v in meta["quality"].items() if k != "clips"}, indent=1))
            return 0
        levels = {"high": args.level_high, "mid": args.level_high, "low": args.level_low}
        engines = {e for e in args.regen_engines.split(",") if e}
        meta = pack(args.corpus, args.out, int(args.max_mib * MiB), tree + also, levels, engines,
                    workers=args.workers, n_pesq=args.pesq, n_check=args.check)
    except LlamaVoiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    h, q, s = meta["hours"], meta["quality"], meta["sizes_mib"]
    print(f"packed {h['packed_opus']:.2f} h as Opus + {h['regenerated']:.2f} h to regenerate "
          f"(corpus {h['corpus']:.2f} h; training {h['train']:.2f} of {h['corpus_train']:.2f} h)")
    for name, sp in meta["speakers"].items():
        extra = f", {sp['kbps']} kbps" if "kbps" in sp else ""
        print(f"  {name:14s} {sp['how']:26s} {sp['hours_packed']:.3f}/{sp['hours_in_corpus']:.3f} h{extra}")
    if q:
        print(f"decode check: {q['checked']} clips, same length {q['all_same_length']}, finite {q['all_finite']}; "
              f"PESQ-WB {q.get('pesq_wb_mean', q.get('pesq'))} (min {q.get('pesq_wb_min', '-')})")
    print(f"sizes (MiB): pack {s['pack']}, tree + other carried {s['other_carried']}, total {s['total']} "
          f"of {s['limit']}")
    if s["total"] > s["limit"]:
        print("error: over the limit", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
