"""Moving model weights between the accelerator machine and here, and finishing a model.

The accelerator tool returns at most 8 files of 16 MiB from ``$OUT`` and carries at most 64 MiB
there, so weights travel as a *kit*: a directory (save_pretrained layout, fp16) packed into one
uncompressed tar, cut into parts of at most :data:`PART_BYTES`, with ``kit.json`` holding the
SHA-256 of the whole tar and of every part. :func:`join_kit` refuses anything that does not match.

Also here, because the device driver and the fetch script both need them:

* :func:`load_run_weights`: the newest weights of a training run, EMA weights when the run keeps
  an EMA (from ``final/`` or straight from the newest checkpoint, without restarting training);
* :func:`write_weights`: save_pretrained in fp16, optionally only some modules (``vae.``);
* :func:`encode_default_voices` and :func:`verify_model` for the shipped model directory.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llamavoice.errors import CheckpointError

PART_BYTES = 15 * 2**20  # the tool returns files of at most 16 MiB: stay clearly under
MAX_PARTS = 5  # 8 files come back per call: the parts + kit.json + state.json + logs.tar.gz
KIT_INFO = "kit_info.json"  # inside the kit directory: what these weights are
VOICES_DIR = "voices"


# --------------------------------------------------------------------------------------------
# split / join
# --------------------------------------------------------------------------------------------


def sha256_file(path: str | Path, chunk: int = 2**22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def split_file(src: str | Path, out_dir: str | Path, prefix: str, part_bytes: int = PART_BYTES) -> list[dict]:
    """Cut ``src`` into ``out_dir/prefix.partNN`` of at most ``part_bytes``; returns their records."""
    src, out_dir = Path(src), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = []
    with open(src, "rb") as f:
        index = 0
        while True:
            block = f.read(part_bytes)
            if not block and index > 0:
                break
            name = f"{prefix}.part{index:02d}"
            (out_dir / name).write_bytes(block)
            parts.append({"file": name, "size": len(block), "sha256": hashlib.sha256(block).hexdigest()})
            index += 1
            if len(block) < part_bytes:
                break
    return parts


def join_parts(folder: str | Path, parts: Sequence[dict], dst: str | Path, sha256: str, size: int) -> Path:
    """Concatenate the parts listed in a kit record into ``dst``, checking every checksum."""
    folder, dst = Path(folder), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".tmp")
    whole = hashlib.sha256()
    with open(tmp, "wb") as out:
        for part in parts:
            path = folder / part["file"]
            if not path.is_file():
                tmp.unlink(missing_ok=True)
                raise CheckpointError(f"kit part {path} is missing; fetch every file the device call returned")
            data = path.read_bytes()
            if len(data) != part["size"] or hashlib.sha256(data).hexdigest() != part["sha256"]:
                tmp.unlink(missing_ok=True)
                raise CheckpointError(f"kit part {path} is corrupt or from another call (size/checksum mismatch)")
            whole.update(data)
            out.write(data)
    if whole.hexdigest() != sha256 or tmp.stat().st_size != size:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(f"the parts in {folder} do not reassemble the kit (checksum mismatch)")
    tmp.replace(dst)
    return dst


def pack_kit(kit_dir: str | Path, out_dir: str | Path, name: str = "kit", part_bytes: int = PART_BYTES,
             max_parts: int = MAX_PARTS) -> dict:
    """Tar ``kit_dir`` (uncompressed: fp16 weights do not shrink) and split it into ``out_dir``.

    Writes ``out_dir/<name>.json`` (the record :func:`join_kit` reads) and the parts."""
    kit_dir, out_dir = Path(kit_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tar_path = out_dir / f".{name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for path in sorted(kit_dir.rglob("*")):
            if path.is_file():
                tar.add(path, arcname=str(path.relative_to(kit_dir)))
    size = tar_path.stat().st_size
    if size > part_bytes * max_parts:
        tar_path.unlink()
        raise CheckpointError(
            f"kit {kit_dir} is {size / 2**20:.1f} MiB: more than {max_parts} parts of {part_bytes / 2**20:.0f} MiB "
            "can come back from one device call"
        )
    for old in out_dir.glob(f"{name}.part*"):
        old.unlink()
    record = {
        "name": name,
        "info": read_kit_info(kit_dir),
        "size": size,
        "sha256": sha256_file(tar_path),
        "parts": split_file(tar_path, out_dir, name, part_bytes),
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    tar_path.unlink()
    (out_dir / f"{name}.json").write_text(json.dumps(record, indent=1))
    return record


def join_kit(record_path: str | Path, dest: str | Path) -> dict:
    """Reassemble a kit from ``kit.json`` and the parts beside it, and unpack it into ``dest``
    (replaced). Returns the kit record."""
    record_path, dest = Path(record_path), Path(dest)
    if not record_path.is_file():
        raise CheckpointError(f"{record_path} not found: pass the folder where the device call's files landed")
    try:
        record = json.loads(record_path.read_text())
        parts, sha, size = record["parts"], record["sha256"], int(record["size"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{record_path} is not a kit record ({exc})") from exc
    staging = dest.with_name(dest.name + ".incoming")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    tar_path = join_parts(record_path.parent, parts, staging / ".kit.tar", sha, size)
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            target = (staging / member.name).resolve()
            if not member.isfile() or staging.resolve() not in target.parents:
                raise CheckpointError(f"kit {record_path} holds an unexpected entry {member.name!r}")
        tar.extractall(staging, filter="data")
    tar_path.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    staging.rename(dest)
    return record


def read_kit_info(kit_dir: str | Path) -> dict:
    path = Path(kit_dir) / KIT_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


# --------------------------------------------------------------------------------------------
# weights of a run
# --------------------------------------------------------------------------------------------


def load_run_weights(run_dir: str | Path) -> tuple[Any, dict]:
    """The newest weights of a training run as a LlamaVoice (fp32, CPU) and a description.

    ``final/`` when the run finished after its newest checkpoint; else the newest checkpoint with
    its EMA weights swapped in (what the run's own export would have written)."""
    from llamavoice.models.llamavoice import LlamaVoice
    from llamavoice.train.checkpoint import latest_checkpoint, model_from_checkpoint, read_meta

    run_dir = Path(run_dir)
    final = run_dir / "final"
    ckpt = latest_checkpoint(run_dir)
    final_ok = (final / "config.json").is_file() and (final / "model.safetensors").is_file()
    if final_ok and (ckpt is None or (final / "model.safetensors").stat().st_mtime >= ckpt.stat().st_mtime):
        step = int(ckpt.name.split("_")[1]) if ckpt is not None else None
        return LlamaVoice.from_pretrained(final), {"source": str(final), "step": step, "ema": None}
    if ckpt is None:
        raise CheckpointError(f"run {run_dir} has neither a checkpoint nor a final export")
    model, which = model_from_checkpoint(ckpt)
    return model, {"source": str(ckpt), "step": int(read_meta(ckpt)["step"]), "ema": which == "checkpoint EMA weights"}


def write_weights(model: Any, directory: str | Path, info: dict, prefixes: Sequence[str] | None = None) -> Path:
    """save_pretrained in fp16 (+ ``kit_info.json``). ``prefixes`` keeps only those tensors (e.g.
    ``["vae."]`` while only the VAE is trained): such a directory is a ``train.init_from`` source,
    not a loadable model."""
    import torch
    from safetensors.torch import load_file, save_file

    from llamavoice.version import FORMAT_VERSION

    directory = Path(directory)
    shutil.rmtree(directory, ignore_errors=True)
    model.save_pretrained(directory, dtype=torch.float16)
    if prefixes:
        weights = directory / "model.safetensors"
        state = {k: v for k, v in load_file(str(weights)).items() if k.startswith(tuple(prefixes))}
        save_file(state, str(weights), metadata={"format_version": FORMAT_VERSION})
    (directory / KIT_INFO).write_text(json.dumps({**info, "tensors": list(prefixes) if prefixes else "all"}, indent=1))
    return directory


# --------------------------------------------------------------------------------------------
# voices and verification of a finished model directory
# --------------------------------------------------------------------------------------------

# Voices shipped with the default model: (file name, speaker, manifest). The first is also
# written as default.safetensors. Training speakers first (best teacher first), then the two
# held-out speakers, whose voices the model never heard in training.
DEFAULT_VOICES: tuple[tuple[str, str, str], ...] = (
    ("hibari", "hibari", "manifest_train.jsonl"),
    ("joe", "joe", "manifest_train.jsonl"),
    ("hibari_lo", "hibari_lo", "manifest_train.jsonl"),
    ("joe_lo", "joe_lo", "manifest_train.jsonl"),
    ("heldout_kokoro_kumo", "kokoro_kumo", "manifest_heldout_speakers.jsonl"),
    ("heldout_kokoro_gong", "kokoro_gong", "manifest_heldout_speakers.jsonl"),
)


# The shipped voices' clips: 3-8 s, closest to 5 s (the CPU recipe trains on prompts of at most 6 s).
VOICE_CLIP_LIMITS = {"target": 5.0, "lo": 3.0, "hi": 8.0}
# Any usable voice clip (pick_clips' defaults): 4-14 s, closest to 8 s.
ANY_CLIP_LIMITS = {"target": 8.0, "lo": 4.0, "hi": 14.0}


def no_clip_message(limits: dict[str, float]) -> str:
    """How a speaker without a clip in ``limits`` is reported."""
    return f"no clip of {limits['lo']:g}-{limits['hi']:g} s"


def pick_clips(manifest: str | Path, speaker: str, count: int, target: float = ANY_CLIP_LIMITS["target"],
               lo: float = ANY_CLIP_LIMITS["lo"], hi: float = ANY_CLIP_LIMITS["hi"]) -> list[dict]:
    """The ``count`` utterances of ``speaker`` closest to ``target`` seconds within [lo, hi], closest
    first (ties by path); fewer when the speaker has fewer."""
    from llamavoice.data.manifest import read_manifest

    rows = [e for e in read_manifest(manifest) if e.speaker == speaker and lo <= e.duration <= hi]
    rows.sort(key=lambda e: (abs(e.duration - target), e.audio))
    return [{"audio": e.audio, "text": e.text, "duration": e.duration} for e in rows[:count]]


def pick_clip(manifest: str | Path, speaker: str, **limits: float) -> dict | None:
    """The utterance of ``speaker`` closest to ``target`` seconds within [lo, hi] (``limits``, as
    :func:`pick_clips` takes them; ties by path), or None."""
    clips = pick_clips(manifest, speaker, 1, **limits)
    return clips[0] if clips else None


def encode_default_voices(model_dir: str | Path, corpus_dir: str | Path, device: str = "cpu",
                          voices: Sequence[tuple[str, str, str]] = DEFAULT_VOICES,
                          default: str | None = None, **clip_limits: float) -> list[dict]:
    """Encode one clip per voice into ``model_dir/voices/NAME.safetensors``; the voice named
    ``default`` (a training speaker, added when not in ``voices``; else the first voice) is also
    written as ``default.safetensors``. Speakers missing from the corpus are skipped and reported."""
    import llamavoice

    if default is not None:
        # The default first: it is the one copied to default.safetensors.
        first = [v for v in voices if v[0] == default] or [(default, default, "manifest_train.jsonl")]
        voices = first + [v for v in voices if v[0] != default]
    model_dir, corpus_dir = Path(model_dir), Path(corpus_dir)
    tts = llamavoice.load(model_dir, device=device)
    out_dir = model_dir / VOICES_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    limits = {**ANY_CLIP_LIMITS, **clip_limits}
    report = []
    for name, speaker, manifest in voices:
        path = corpus_dir / manifest
        clip = pick_clip(path, speaker, **limits) if path.is_file() else None
        if clip is None:
            if name == default:
                raise CheckpointError(f"the default voice {default!r}: no clip of that speaker in {path}; "
                                      "name a speaker of the corpus's training manifest")
            report.append({"voice": name, "speaker": speaker, "skipped": f"{no_clip_message(limits)} in {path}"})
            continue
        voice = tts.encode_voice(clip["audio"], name=name)
        voice.save(out_dir / f"{name}.safetensors")
        report.append({"voice": name, "speaker": speaker, "clip": Path(clip["audio"]).name,
                       "clip_seconds": clip["duration"], "prompt_seconds": round(voice.duration, 2),
                       "text": clip["text"]})
    written = [r for r in report if "skipped" not in r]
    if written:
        shutil.copyfile(out_dir / f"{written[0]['voice']}.safetensors", out_dir / "default.safetensors")
        report.append({"voice": "default", "same_as": written[0]["voice"]})
    (model_dir / VOICES_DIR / "voices.json").write_text(json.dumps(report, indent=1))
    return report


VERIFY_TEXT = "The default model says hello, and reads 42 numbers in 2025."


def verify_model(model_dir: str | Path, device: str = "cpu", text: str = VERIFY_TEXT, wav_out: str | Path | None = None,
                 max_seconds: float | None = None, seed: int = 0) -> dict:
    """Load a model directory the way users do (``llamavoice.load``) and speak ``text`` with its
    default voice. Raises if the audio is empty or not finite; returns duration and speed."""
    import numpy as np

    import llamavoice
    from llamavoice.audio import save_audio

    t0 = time.perf_counter()
    tts = llamavoice.load(model_dir, device=device)
    load_s = time.perf_counter() - t0
    sampling = {"seed": seed, **({"max_seconds": max_seconds} if max_seconds else {})}
    t0 = time.perf_counter()
    audio, sr = tts.synthesize(text, **sampling)
    synth_s = time.perf_counter() - t0
    audio = np.asarray(audio)
    if audio.size == 0 or not np.isfinite(audio).all():
        raise CheckpointError(f"{model_dir}: synthesis produced {'no' if audio.size == 0 else 'non-finite'} audio")
    if wav_out is not None:
        save_audio(wav_out, audio, sr)
    seconds = audio.size / sr
    return {"voices": tts.list_voices(), "seconds": round(seconds, 2), "load_s": round(load_s, 2),
            "synth_s": round(synth_s, 2), "rtf": round(synth_s / max(seconds, 1e-9), 3),
            "peak": round(float(np.abs(audio).max()), 3), "device": str(tts.device)}
