"""The training callback (TensorBoard curves) and VAE reconstruction scoring, on real tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from llamavoice.audio import save_audio
from llamavoice.errors import ConfigError

pytest.importorskip("faster_whisper", reason="evaluators are the [eval] extra: pip install -e '.[eval]'")
pytest.importorskip("resemblyzer", reason="evaluators are the [eval] extra: pip install -e '.[eval]'")
pytest.importorskip("pesq", reason="evaluators are the [eval] extra: pip install -e '.[eval]'")
hibari = pytest.importorskip("hibari", reason="hibari-tts (dev extra) speaks the test sentences")

from llamavoice.eval.callback import EvalCallback  # noqa: E402
from llamavoice.eval.lists import EvalItem  # noqa: E402
from llamavoice.eval.systems import TeacherSystem  # noqa: E402

# Long enough (over 3 s) to serve as voice prompts for the inference API.
SENTENCES = ["The weather is sunny and warm today, so we will have lunch outside in the garden.",
             "I would like a cup of coffee with milk, and maybe a slice of that apple cake.",
             "We walked along the river until the sun went down behind the hills."]


@pytest.fixture(scope="module")
def items(tmp_path_factory) -> list[EvalItem]:
    root = tmp_path_factory.mktemp("voice")
    tts = hibari.Hibari(threads=1)
    paths = []
    for n, text in enumerate(SENTENCES):
        paths.append(root / f"h{n}.wav")
        save_audio(paths[-1], tts(text, seed=n), 24000)
    return [EvalItem(text, paths[(n + 1) % 3], paths[n], "hibari", f"h{n}") for n, text in enumerate(SENTENCES)]


def _scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_callback_runs_every_m_steps_and_logs_curves(items, tiny_model, tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    # The system under test here is the ground truth itself, so the figures have known values.
    callback = EvalCallback(items, every_steps=5, max_items=2, metrics=("asr", "sim"),
                            system_factory=lambda model, scratch: TeacherSystem(items))
    tiny_model.train()
    writer = SummaryWriter(str(tmp_path))
    assert callback(tiny_model, 3, writer) == {}  # not due: nothing computed
    first = callback(tiny_model, 5, writer)
    second = callback(tiny_model, 10, writer)
    writer.close()
    assert tiny_model.training  # train mode restored after evaluating
    assert first == second  # same fixed subset each time
    assert first["wer"] == 0.0 and first["failed"] == 0.0
    assert 0.6 < first["sim_o"] <= 1.0 and first["sim_o"] == pytest.approx(first["sim_prompt"])
    assert "mos" not in first and "rtf" not in first  # not asked for / ground truth has no speed
    curves = _scalars(tmp_path)
    assert [step for step, _ in curves["eval/wer"]] == [5, 10]
    assert curves["eval/sim_o"][0][1] == pytest.approx(first["sim_o"], rel=1e-6)


def test_callback_rejects_bad_settings(items) -> None:
    with pytest.raises(ConfigError, match="every_steps"):
        EvalCallback(items, every_steps=0)
    with pytest.raises(ConfigError, match="empty"):
        EvalCallback([], every_steps=10)


def test_callback_default_system_goes_through_saved_model(items, tiny_model) -> None:
    import llamavoice

    if not hasattr(llamavoice, "load"):
        pytest.skip("the inference API (llamavoice.load) is not in this checkout yet")
    callback = EvalCallback(items, every_steps=1, max_items=1, metrics=("asr", "speed"))
    figures = callback(tiny_model, 1, None)
    # An untrained tiny model says nothing intelligible, but it is scored, not crashed.
    assert set(figures) >= {"failed"}
    assert figures["failed"] == 0.0 and figures["wer"] >= 0.5 and figures["rtf"] > 0


def test_vae_reconstruction_report(items, tiny_model, tmp_path: Path) -> None:
    from llamavoice.eval.reconstruction import run_vae_eval

    clips = [it.reference for it in items[:2]]
    summary = run_vae_eval(tiny_model, clips, tmp_path, progress=False)
    wide, phone = summary["anchor: 16 kHz band-limit"], summary["anchor: 8 kHz telephone band"]
    assert wide["n"] == 2 and wide["failed"] == 0
    # Known orderings: less bandwidth scores worse; an untrained VAE is worse than both anchors.
    assert wide["pesq_wb"] > phone["pesq_wb"] and wide["stoi"] >= phone["stoi"]
    assert wide["mel_distance"] < phone["mel_distance"]
    assert summary["vae"]["pesq_wb"] < phone["pesq_wb"] - 1.0 and summary["vae"]["stoi"] < phone["stoi"] - 0.2
    assert summary["vae"]["n"] == 2
    saved = json.loads((tmp_path / "vae_summary.json").read_text())
    assert saved["run"]["clips"] == 2 and "| vae |" in (tmp_path / "vae_summary.md").read_text()
    assert (tmp_path / "vae_utterances.csv").read_text().count("\n") == 1 + 3 * 2


def test_vae_eval_handles_clips_too_short_for_pesq(tiny_model, tmp_path: Path) -> None:
    from llamavoice.eval.reconstruction import run_vae_eval

    clip = tmp_path / "blip.wav"
    save_audio(clip, 0.1 * np.sin(np.arange(2400) / 10).astype(np.float32), 24000)  # 0.1 s
    summary = run_vae_eval(tiny_model, [clip], tmp_path / "run", anchors=False, progress=False)
    assert summary["vae"]["failed"] == 1 and summary["vae"]["pesq_wb"] is None
    assert "PESQ cannot score this pair" in (tmp_path / "run" / "vae_utterances.csv").read_text()


def test_vae_eval_scores_reconstructions_against_the_originals(items, tiny_model, tmp_path: Path) -> None:
    from llamavoice.errors import ConfigError
    from llamavoice.eval.reconstruction import run_vae_eval

    clips, texts = [it.reference for it in items[:2]], [it.text for it in items[:2]]
    summary = run_vae_eval(tiny_model, clips, tmp_path, anchors=False, progress=False, texts=texts,
                           metrics=("asr", "mos"))
    original, vae = summary["original"], summary["vae"]
    # hibari's clips are the ceiling: Whisper hears them, DistillMOS likes them; an untrained VAE's
    # reconstructions are neither intelligible nor natural.
    assert original["n"] == 2 and original["wer"] < 0.15 and original["mos"] > 3.5
    assert vae["wer"] > 0.5 and vae["mos"] < original["mos"] - 1.0
    assert original["pesq_wb"] is None and vae["pesq_wb"] is not None  # a clip is not scored against itself
    table = (tmp_path / "vae_summary.md").read_text()
    assert "| original |" in table and "DistillMOS" in table
    with pytest.raises(ConfigError, match="text of every clip"):
        run_vae_eval(tiny_model, clips, tmp_path / "no_text", metrics=("asr",), progress=False)
    with pytest.raises(ConfigError, match="unknown VAE metric"):
        run_vae_eval(tiny_model, clips, tmp_path / "bad", metrics=("pesq",), progress=False)
