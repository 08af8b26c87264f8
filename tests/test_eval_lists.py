"""Eval lists, manifests → lists, and the summary/report maths; no evaluator packages needed."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from llamavoice.errors import ConfigError
from llamavoice.eval.lists import EvalItem, eval_list_from_manifests, load_eval_list, save_eval_list
from llamavoice.eval.report import markdown_table, summarize


def _manifest(path: Path, rows: list[tuple[str, str, str, float | None]]) -> Path:
    lines = []
    for audio, text, speaker, duration in rows:
        row = {"audio": audio, "text": text, "speaker": speaker}
        if duration is not None:
            row["duration"] = duration
        lines.append(json.dumps(row))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_prompts_are_other_sentences_long_enough_to_clone_from(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path / "m.jsonl", [
        ("wavs/a/a0.wav", "zero", "a", 2.0),
        ("wavs/a/a1.wav", "one", "a", 5.0),
        ("wavs/a/a2.wav", "two", "a", 1.0),
        ("wavs/a/a3.wav", "three", "a", 20.0),  # too long to be a prompt, still an item
        ("wavs/a/a4.wav", "zero", "a", 6.0),  # same text as a0: never a0's prompt
        ("wavs/b/b0.wav", "solo", "b", 4.0),  # a speaker with one clip has no prompt: skipped
    ])
    items = {it.item_id: it for it in eval_list_from_manifests([manifest])}
    assert set(items) == {"a0", "a1", "a2", "a3", "a4"}
    prompt = {k: it.prompt.name for k, it in items.items()}
    assert prompt["a0"] == "a1.wav"  # next long-enough clip in order
    assert prompt["a1"] == "a4.wav"  # a2 too short, a3 too long, a4 fine
    assert prompt["a4"] == "a1.wav"  # a0 has the same text
    assert items["a0"].reference == tmp_path / "wavs/a/a0.wav"  # paths resolved against the manifest
    # Nothing long enough: the longest clip under the maximum.
    short = _manifest(tmp_path / "s.jsonl", [("x0.wav", "a", "x", 1.0), ("x1.wav", "b", "x", 2.0),
                                             ("x2.wav", "c", "x", 1.5)])
    assert {it.item_id: it.prompt.name for it in eval_list_from_manifests([short])}["x1"] == "x2.wav"


def test_subsets_round_robin_over_speakers_and_follow_the_seed(tmp_path: Path) -> None:
    rows = [(f"wavs/{s}/{s}{i}.wav", f"{s} sentence {i}", s, None) for s in "abc" for i in range(5)]
    manifest = _manifest(tmp_path / "m.jsonl", rows)
    six = eval_list_from_manifests([manifest], max_items=6, seed=1)
    assert [it.speaker for it in six] == ["a", "b", "c", "a", "b", "c"]
    assert six == eval_list_from_manifests([manifest], max_items=6, seed=1)
    assert six != eval_list_from_manifests([manifest], max_items=6, seed=2)


def test_eval_list_round_trip_keeps_paths_usable(tmp_path: Path) -> None:
    inside, outside = tmp_path / "lists" / "wavs" / "p.wav", tmp_path / "elsewhere" / "r.wav"
    for p in (inside, outside):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    items = [EvalItem("Hello there.", inside, outside, "spk", "u1"), EvalItem("Bye.", None, None, "spk", "u2")]
    path = save_eval_list(items, tmp_path / "lists" / "eval.jsonl")
    raw = [json.loads(line) for line in path.read_text().splitlines()]
    assert raw[0]["prompt"] == "wavs/p.wav"  # next to the list: relative, moves with it
    assert raw[0]["reference"] == str(outside.resolve())  # elsewhere: absolute
    back = load_eval_list(path)
    assert [(b.text, b.prompt, b.reference, b.item_id) for b in back] == [
        ("Hello there.", inside.resolve(), outside.resolve(), "u1"), ("Bye.", None, None, "u2")]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "hi", "speaker": "a"}\nnot json\n', r"eval\.jsonl:2 is not valid JSON"),
        ('{"speaker": "a"}\n', r"'text' must be a non-empty string"),
        ('{"id": "x", "text": "a"}\n{"id": "x", "text": "b"}\n', "duplicate id 'x'"),
        ('{"text": "hi", "prompt": "missing.wav"}\n', "prompt audio file not found"),
        ('["text"]\n', "must be a JSON object"),
        ("\n\n", "has no items"),
    ],
)
def test_bad_eval_lists_name_the_line_and_problem(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "eval.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_eval_list(path)


def test_manifest_problems_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="manifest not found"):
        eval_list_from_manifests([tmp_path / "nope.jsonl"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"audio": "a.wav"}\n')
    with pytest.raises(ConfigError, match=r"bad\.jsonl:1: expected a JSON object with audio, text and speaker"):
        eval_list_from_manifests([bad])


def _row(system: str, speaker: str, word_errors: int, words: int, sim: float, rtf: float, error: str = "") -> dict:
    nan = math.nan
    return {"system": system, "speaker": speaker, "word_errors": word_errors, "words": words,
            "wer": word_errors / words, "char_errors": nan, "chars": nan, "sim_o": sim, "sim_prompt": sim,
            "mos": nan, "audio_s": 2.0, "rtf": rtf, "ttfa_s": nan, "error": error}


def test_summary_uses_corpus_level_wer_and_percentiles() -> None:
    rows = [_row("m", "a", 1, 10, 0.8, 0.1), _row("m", "a", 0, 30, 0.6, 0.2), _row("m", "b", 3, 10, 0.4, 0.3),
            _row("m", "b", 9, 9, math.nan, math.nan, error="AudioError: boom")]
    s = summarize(rows)["m"]
    assert s["n"] == 4 and s["failed"] == 1
    assert s["wer"] == pytest.approx(4 / 50)  # failed rows excluded; long sentences weigh more
    assert s["wer_utt_mean"] == pytest.approx((0.1 + 0 + 0.3 + 1.0) / 4)
    assert s["sim_o"] == pytest.approx(0.6)
    assert s["rtf_p50"] == pytest.approx(0.2) and s["rtf_p95"] == pytest.approx(0.29)
    assert s["cer"] is None and s["mos"] is None and s["ttfa_p50_s"] is None
    assert s["per_speaker"]["a"]["wer"] == pytest.approx(1 / 40)
    table = markdown_table({"m": s})
    assert "| m | 4 | 1 | 8.0 | – | 0.600 |" in table
    assert "| b | 30.0 / 0.400 |" in table
