"""Eval lists: which sentences to speak in which voices.

An eval list is a JSONL file, one item per line::

    {"id": "spk1_0001", "text": "...", "prompt": "wavs/spk1/a.wav", "reference": "wavs/spk1/b.wav",
     "speaker": "spk1"}

``prompt`` is the voice to clone (another sentence of the speaker); ``reference`` is the same
speaker saying ``text`` (the ground truth, used for SIM-o and as the teacher's output). Relative
paths are relative to the list file. :func:`eval_list_from_manifests` builds such a list from the
corpus manifests (held-out sentences x held-out voices).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llamavoice.errors import ConfigError
from llamavoice.jsonl import iter_jsonl


@dataclass(frozen=True)
class EvalItem:
    """One sentence to synthesize in one voice."""

    text: str
    prompt: Path | None  # voice prompt: another clip of the speaker
    reference: Path | None  # the speaker saying ``text`` (ground truth), if available
    speaker: str
    item_id: str


def _resolve(base: Path, value: Any, what: str, where: str) -> Path | None:
    if value in (None, ""):
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: '{what}' must be a path string, got {type(value).__name__}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def load_eval_list(path: str | Path, check_files: bool = True) -> list[EvalItem]:
    """Read a JSONL eval list. Needs ``text`` and ``speaker``; ``prompt``/``reference``/``id`` optional."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"eval list not found: {path}")
    items: list[EvalItem] = []
    seen: set[str] = set()
    for n, row in iter_jsonl(path, ConfigError, where=lambda number: f"{path}:{number}"):
        where = f"{path}:{n}"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: each line must be a JSON object")
        text, speaker = row.get("text"), row.get("speaker", "unknown")
        if not isinstance(text, str) or not text.strip():
            raise ConfigError(f"{where}: 'text' must be a non-empty string")
        item_id = str(row.get("id") or f"item{n:05d}")
        if item_id in seen:
            raise ConfigError(f"{where}: duplicate id '{item_id}'; ids must be unique in an eval list")
        seen.add(item_id)
        prompt = _resolve(path.parent, row.get("prompt"), "prompt", where)
        reference = _resolve(path.parent, row.get("reference"), "reference", where)
        if check_files:
            for what, p in (("prompt", prompt), ("reference", reference)):
                if p is not None and not p.is_file():
                    raise ConfigError(f"{where}: {what} audio file not found: {p}")
        items.append(EvalItem(text.strip(), prompt, reference, str(speaker), item_id))
    if not items:
        raise ConfigError(f"eval list {path} has no items")
    return items


def one_per_sentence(items: Sequence[EvalItem]) -> list[EvalItem]:
    """One item per distinct text (the last one with it), ordered by each text's first appearance: what
    one voice reads when it speaks every held-out sentence (``recipes/eval.py --voice``)."""
    return list({item.text: item for item in items}.values())


def save_eval_list(items: Sequence[EvalItem], path: str | Path) -> Path:
    """Write items as JSONL; audio under the list's folder is written relative to it, other audio absolute."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def rel(p: Path | None) -> str | None:
        if p is None:
            return None
        p = Path(p).resolve()
        try:
            return p.relative_to(path.parent.resolve()).as_posix()  # audio next to the list moves with it
        except ValueError:
            return str(p)

    with open(path, "w", encoding="utf-8") as f:
        for it in items:
            f.write(json.dumps({"id": it.item_id, "text": it.text, "prompt": rel(it.prompt),
                                "reference": rel(it.reference), "speaker": it.speaker}, ensure_ascii=False) + "\n")
    return path


def eval_list_from_manifests(manifests: Sequence[str | Path], max_items: int | None = None, seed: int = 0,
                             min_prompt_seconds: float = 3.5, max_prompt_seconds: float = 12.0) -> list[EvalItem]:
    """Eval items from corpus manifests (JSONL rows with ``audio``, ``text``, ``speaker``[, ``duration``]).

    Every row becomes an item whose reference is the row's own audio and whose prompt is another
    clip of the same speaker with different text: the next one, in a fixed order, lasting between
    ``min_prompt_seconds`` and ``max_prompt_seconds`` (the inference API wants at least 3 s of
    sound; the default leaves room for trimmed silence), else the longest one under the maximum.
    Rows without a duration count as suitable. Speakers with a single clip are skipped.
    ``max_items`` keeps a subset spread evenly over speakers (round robin, seeded shuffle).
    """
    by_speaker: dict[str, list[dict]] = {}
    for manifest in manifests:
        manifest = Path(manifest)
        if not manifest.is_file():
            raise ConfigError(f"manifest not found: {manifest}")
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                audio, text, speaker = row["audio"], row["text"], str(row["speaker"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ConfigError(f"{manifest}:{n}: expected a JSON object with audio, text and speaker") from exc
            row = dict(row, audio=_resolve(manifest.parent, audio, "audio", f"{manifest}:{n}"), speaker=speaker,
                       text=text)
            by_speaker.setdefault(speaker, []).append(row)
    per_speaker: dict[str, list[EvalItem]] = {}
    for speaker, rows in sorted(by_speaker.items()):
        rows.sort(key=lambda r: str(r["audio"]))
        for i, row in enumerate(rows):
            others = [rows[(i + k) % len(rows)] for k in range(1, len(rows))]
            others = [r for r in others if r["text"] != row["text"]
                      and (r.get("duration") is None or float(r["duration"]) <= max_prompt_seconds)]
            if not others:
                continue
            good = [r for r in others if r.get("duration") is None or float(r["duration"]) >= min_prompt_seconds]
            prompt = (good[0] if good else max(others, key=lambda r: float(r["duration"])))["audio"]
            per_speaker.setdefault(speaker, []).append(
                EvalItem(row["text"], prompt, row["audio"], speaker, Path(row["audio"]).stem))
    if not per_speaker:
        raise ConfigError("no usable items in the manifests: every speaker needs at least two clips with "
                          "different text (one is the prompt for the other)")
    rng = random.Random(seed)
    for items in per_speaker.values():
        rng.shuffle(items)
    out: list[EvalItem] = []
    queues = [list(v) for v in per_speaker.values()]
    while any(queues) and (max_items is None or len(out) < max_items):
        for q in queues:
            if q and (max_items is None or len(out) < max_items):
                out.append(q.pop(0))
    return out
