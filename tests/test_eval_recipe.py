"""recipes/eval.py, the command line around the harness: sampling settings reach the model, bad ones
are refused before anything loads."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import single_thread

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
