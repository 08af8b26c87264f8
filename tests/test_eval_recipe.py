"""recipes/eval.py, the command line around the harness: sampling settings reach the model, bad ones
are refused before anything loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import single_thread, write_clip

from llamavoice.eval.report import paired_wins
from recipes.eval import main as eval_main

TEXT = "The quick brown fox jumps over the lazy dog, and then it runs far away."


def _eval_list(folder: Path) -> Path:
    path = folder / "eval.jsonl"
    path.write_text(json.dumps({"text": TEXT, "speaker": "anyone", "id": "one"}) + "\n")
    return path


def _audio_seconds(out: Path) -> float:
    with open(out / "utterances.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and not rows[0]["error"], rows
    return float(rows[0]["audio_s"])


def test_sampling_settings_reach_every_model(trained_model_dir: Path, tmp_path: Path) -> None:
    common = ["--eval-list", str(_eval_list(tmp_path)), "--model-dir", str(trained_model_dir),
              "--voice", "default", "--metrics", ""]
    with single_thread():
        assert eval_main([*common, "--out", str(tmp_path / "free")]) == 0
        assert eval_main([*common, "--out", str(tmp_path / "capped"), "--sampling", '{"max_seconds": 0.4}']) == 0
    free, capped = _audio_seconds(tmp_path / "free"), _audio_seconds(tmp_path / "capped")
    assert capped <= 0.4 + 0.1 < free  # the cap binds: an untrained LM talks past 0.5 s on this sentence


@pytest.mark.parametrize("sampling, message", [
    ("{temperature: 0.4}", "not JSON"),
    ("[0.4]", "JSON object"),
    ('{"temprature": 0.4}', "temprature"),
    ('{"temperature": -1}', "out of range"),
    ('{"seed": 3}', "--seed"),
])
def test_bad_sampling_settings_are_refused_before_loading(sampling: str, message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    code = eval_main(["--eval-list", str(_eval_list(tmp_path)), "--model-dir", str(tmp_path / "no-such-model"),
                      "--metrics", "", "--out", str(tmp_path / "out"), "--sampling", sampling])
    err = capsys.readouterr().err
    assert code == 1 and message in err and "Traceback" not in err
    assert not (tmp_path / "out" / "utterances.csv").exists()


def test_paired_wins_compares_the_same_items_and_leaves_out_failures() -> None:
    def row(system: str, item: str, sim: float, error: str = "") -> dict:
        return {"system": system, "item_id": item, "sim_o": sim, "error": error}

    rows = [row("clone", "a", 0.8), row("default", "a", 0.6),   # win
            row("clone", "b", 0.5), row("default", "b", 0.7),   # loss
            row("clone", "c", 0.9), row("default", "c", 0.1),   # win
            row("clone", "d", 0.9), row("default", "d", float("nan"), "RuntimeError: boom"),  # failed: left out
            row("clone", "e", 0.4), row("default", "e", 0.4)]   # a tie is no win
    wins = paired_wins(rows, "clone", "default")
    assert (wins["wins"], wins["compared"], wins["left_out"]) == (2, 4, 1)
    assert wins["share"] == 0.5
    assert paired_wins(rows, "default", "clone")["wins"] == 1


def test_clone_check_speaks_each_item_cloned_and_in_the_default_voice(trained_model_dir: Path, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("resemblyzer", reason="speaker similarity is the [eval] extra")
    rows = []
    for n in range(2):
        prompt = write_clip(tmp_path / f"prompt{n}.wav", 4.0, seed=10 + n)
        reference = write_clip(tmp_path / f"reference{n}.wav", 2.0, seed=20 + n)
        rows.append({"text": TEXT, "speaker": f"s{n}", "id": f"item{n}", "prompt": prompt.name,
                     "reference": reference.name})
    (tmp_path / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    with single_thread():
        code = eval_main(["--eval-list", str(tmp_path / "eval.jsonl"), "--model-dir", str(trained_model_dir),
                          "--metrics", "sim", "--clone-check", "--out", str(out), "--sampling", '{"max_seconds": 1}'])
    assert code == 0
    (check,) = json.loads((out / "clone_check.json").read_text())
    assert check["compared"] == 2 and check["left_out"] == 0 and check["rival"] == check["system"] + "@default"
    assert check["share"] == check["wins"] / 2
    assert f"on {check['wins']} of 2 items" in capsys.readouterr().out


def test_clone_check_refuses_a_fixed_voice(trained_model_dir: Path, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    code = eval_main(["--eval-list", str(_eval_list(tmp_path)), "--model-dir", str(trained_model_dir),
                      "--voice", "default", "--metrics", "sim", "--clone-check", "--out", str(tmp_path / "out")])
    assert code == 1 and "drop --voice" in capsys.readouterr().err
