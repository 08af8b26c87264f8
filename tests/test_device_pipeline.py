"""The accelerator pipeline (recipes/default_model) dry-run on CPU: pack -> device phases -> fetch.

A generated mini corpus (real WAV files) is packed as Opus, unpacked by the device driver in a
fake machine layout (LV_WORK, OUT and the carried folder in tmp_path), the tiny config trains
stage vae, the "lease is lost" (work dir deleted), the returned kit is stashed and carried, stage
lm continues from it on the fresh layout, the export adds voices, and fetch reassembles and
verifies the model. No wheel download, no GPU.
"""

from __future__ import annotations

import gzip
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import SENTENCES, synth_audio

from llamavoice.errors import CheckpointError
from recipes.default_model import device, fetch, pack
from recipes.default_model.kit import join_kit, pack_kit, read_kit_info

ROOT = Path(__file__).resolve().parent.parent
TINY = ROOT / "recipes" / "configs" / "tiny.yaml"
SR = 24000
SPEAKERS = {  # name -> (engine, quality, role)
    "hibari": ("hibari", "high", "train"),
    "joe": ("piper", "high", "train"),
    "fest_kal": ("festival", "low", "train"),
    "kokoro_kumo": ("kokoro", "mid", "heldout"),
    "kokoro_gong": ("kokoro", "mid", "heldout"),
}


def make_corpus(root: Path, hibari_text: bool = False) -> Path:
    """A corpus laid out like recipes/data/build_corpus.py's: wavs/, manifests, plan.json."""
    manifests = {name: [] for name in pack.MANIFESTS.values()}
    jobs = []
    for s, (name, (_, _, role)) in enumerate(SPEAKERS.items()):
        lengths = [4.5] if role == "heldout" else [0.6, 0.8, 0.7, 0.9, 1.0, 4.5]
        for u, seconds in enumerate(lengths):
            split = "heldout_speakers" if role == "heldout" else ("heldout_sentences" if u in (3, 4) else "train")
            rel = f"wavs/{name}/{name}_{u:04d}.wav"
            wav = synth_audio(seconds, SR, seed=50 * s + u)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            sf.write(root / rel, wav, SR, subtype="PCM_16")
            text = "Hello there." if hibari_text else SENTENCES[(s + u) % len(SENTENCES)]
            row = {"audio": rel, "text": text, "speaker": name, "duration": round(len(wav) / SR, 3),
                   "sample_rate": SR, "language": "en"}
            manifests[pack.MANIFESTS[split]].append(row)
            jobs.append({"utt_id": Path(rel).stem, "speaker": name, "text": text, "split": split, "audio": rel})
    for fname, rows in manifests.items():
        (root / fname).write_text("".join(json.dumps(r) + "\n" for r in rows))
    speakers = {n: {"name": n, "engine": e, "voice": "heart" if e == "hibari" else "x", "pitch_cents": 0,
                    "speed": 1.0, "weight": 1.0, "gender": "f", "quality": q, "sec_per_char": 0.054}
                for n, (e, q, _) in SPEAKERS.items()}
    (root / "plan.json").write_text(json.dumps({"config": {"seed": 1234}, "speakers": speakers, "jobs": jobs}))
    return root


def test_kit_split_join_round_trip_and_refusals(tmp_path):
    src = tmp_path / "model"
    (src / "voices").mkdir(parents=True)
    payload = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    (src / "model.safetensors").write_bytes(payload)
    (src / "voices" / "default.safetensors").write_bytes(b"voice")
    (src / "kit_info.json").write_text(json.dumps({"kind": "export"}))
    out = tmp_path / "out"
    record = pack_kit(src, out, part_bytes=4096)
    assert len(record["parts"]) >= 3 and all(p["size"] <= 4096 for p in record["parts"])
    dest = join_kit(out / "kit.json", tmp_path / "back")
    assert (tmp_path / "back" / "model.safetensors").read_bytes() == payload
    assert (tmp_path / "back" / "voices" / "default.safetensors").read_bytes() == b"voice"
    assert read_kit_info(tmp_path / "back") == {"kind": "export"} and dest["info"] == {"kind": "export"}

    part = out / record["parts"][1]["file"]
    part.write_bytes(b"x" + part.read_bytes()[1:])
    with pytest.raises(CheckpointError, match="corrupt"):
        join_kit(out / "kit.json", tmp_path / "back2")
    part.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        join_kit(out / "kit.json", tmp_path / "back2")
    assert not (tmp_path / "back2").exists()
    with pytest.raises(CheckpointError, match="more than 2 parts"):
        pack_kit(src, tmp_path / "out2", part_bytes=4096, max_parts=2)


def test_priority_order_keeps_every_speakers_share():
    rows = [{"audio": f"a/{s}_{i}.wav", "speaker": s, "split": "train", "duration": d}
            for s, n, d in (("big", 300, 1.0), ("small", 30, 2.0)) for i in range(n)]
    rows += [{"audio": f"h/{i}.wav", "speaker": "held", "split": "heldout_speakers", "duration": 3.0}
             for i in range(3)]
    order = pack.priority_order(rows)
    assert [r["speaker"] for r in order[:3]] == ["held"] * 3
    cut = order[: 3 + 110]  # about a third of the training hours
    share = {s: sum(r["duration"] for r in cut if r["speaker"] == s) /
             sum(r["duration"] for r in rows if r["speaker"] == s) for s in ("big", "small")}
    assert abs(share["big"] - share["small"]) < 0.08, share


def test_stop_reason_and_rate():
    # A checkpoint just landed at 100; the next (200) would need 100 s at 1 step/s: past the deadline.
    assert device.stop_reason(0.0, 50.0, 100, 50, 100, 1000, 100, 1.0, 5.0).startswith("after the checkpoint")
    assert device.stop_reason(0.0, 500.0, 100, 50, 100, 1000, 100, 1.0, 5.0) is None  # it fits
    assert device.stop_reason(0.0, 50.0, 100, 100, 120, 1000, 100, 1.0, 5.0) is None  # no new checkpoint
    assert device.stop_reason(60.0, 50.0, 100, 100, 120, 1000, 100, 1.0, 5.0) == "at the deadline"
    assert device.stop_reason(0.0, 50.0, 1000, 900, 1000, 1000, 100, 1.0, 5.0) is None  # the final one
    samples = [(0.0, 1), (10.0, 21), (20.0, 41)]
    assert device.measured_rate(samples) == pytest.approx(2.0)
    assert device.measured_rate(samples[:1]) is None


def test_pack_respects_budget_and_decodes_back(tmp_path):
    corpus = make_corpus(tmp_path / "corpus")
    out = tmp_path / "pack"
    full = pack.pack(corpus, out, 10 * pack.MiB, 0, pack.DEFAULT_LEVELS, set(), n_pesq=0, n_check=5,
                     progress=False)
    assert full["hours"]["packed_opus"] == pytest.approx(full["hours"]["corpus"], abs=1e-3)
    assert full["quality"]["all_same_length"] and full["quality"]["all_finite"]
    audio_bytes = (out / pack.BLOB).stat().st_size
    # A budget that holds about half of the audio beside 1 MiB of "other carried files".
    fixed = pack.MiB
    index_bytes = (out / pack.INDEX).stat().st_size
    limit = fixed + audio_bytes // 2 + index_bytes + 80 * 1024 + 16 * 1024
    half = pack.pack(corpus, out, limit, fixed, pack.DEFAULT_LEVELS, {"hibari"}, n_pesq=0, n_check=5,
                     progress=False)
    assert pack.dir_bytes(out) + fixed <= limit
    assert half["speakers"]["hibari"]["how"] == "regenerated on the device"
    assert half["speakers"]["hibari"]["hours_packed"] == half["speakers"]["hibari"]["hours_in_corpus"]
    assert half["speakers"]["kokoro_kumo"]["utterances"] == 1  # held-out speakers are packed first
    assert 0 < half["hours"]["packed_opus"] < full["hours"]["packed_opus"]
    rows = [json.loads(x) for x in gzip.decompress((out / pack.INDEX).read_bytes()).decode().splitlines()]
    assert {r["src"] for r in rows if r["speaker"] == "hibari"} == {"regen"}

    # Unpack without the hibari engine's rows: the Opus clips come back at full length and close
    # to the originals; manifests list exactly the clips that exist.
    target = tmp_path / "unpacked"
    meta = json.loads((out / pack.META).read_text())
    meta["regen"]["speakers"] = {}
    (out / pack.META).write_text(json.dumps(meta))
    (out / pack.INDEX).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows
                                                         if r["src"] == "opus").encode()))
    report = device.unpack_corpus(out, target, workers=1, log=lambda m: None)
    assert report["failed"] == 0
    listed = [json.loads(x) for x in (target / "manifest_train.jsonl").read_text().splitlines()]
    assert listed and all((target / r["audio"]).is_file() for r in listed)
    for r in listed[:3]:
        a, _ = sf.read(target / r["audio"], dtype="float32")
        b, _ = sf.read(corpus / r["audio"], dtype="float32")
        assert len(a) == len(b)
        assert np.corrcoef(a, b)[0, 1] > 0.9


def test_regenerated_voice_matches_plan(tmp_path):
    pytest.importorskip("hibari")
    corpus = make_corpus(tmp_path / "corpus", hibari_text=True)
    out = tmp_path / "pack"
    pack.pack(corpus, out, 10 * pack.MiB, 0, pack.DEFAULT_LEVELS, {"hibari"}, n_pesq=0, n_check=0, progress=False)
    rows = [json.loads(x) for x in gzip.decompress((out / pack.INDEX).read_bytes()).decode().splitlines()]
    keep = [r for r in rows if r["src"] == "opus" or r["audio"].endswith(("_0000.wav", "_0004.wav"))]
    (out / pack.INDEX).write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in keep).encode()))
    target = tmp_path / "unpacked"
    report = device.unpack_corpus(out, target, workers=1, log=lambda m: None)
    assert report["failed"] == 0
    regen = target / "wavs" / "hibari" / "hibari_0000.wav"
    info = sf.info(str(regen))
    assert info.samplerate == SR and info.subtype == "PCM_16" and 0.5 < info.duration < 3.0  # "Hello there."
    val = [json.loads(x) for x in (target / "manifest_heldout_sentences.jsonl").read_text().splitlines()]
    assert "wavs/hibari/hibari_0004.wav" in [r["audio"] for r in val]


def _driver_args(phase: str, tmp_path: Path, out: str, work: Path) -> list[str]:
    args = [phase, "--work", str(work), "--out", str(tmp_path / out), "--repo", str(ROOT),
            "--pack", str(tmp_path / "carry" / ".devpack"), "--carried-state", str(tmp_path / "carry" / ".devstate"),
            "--config", str(TINY), "--steps", "vae=4,lm=4", "--device", "cpu", "--workers", "1",
            "--poll-seconds", "0.2", "--verify-max-seconds", "1.0", "--min-chunk", "0", "--export-seconds", "0"]
    for item in ("train.frame_budget_seconds=2.0", "train.max_utterance_seconds=2.0",
                 "train.vae_segment_seconds=0.2", "train.num_workers=0", "train.num_samples=0"):
        args += ["--set", item]
    return args


def test_device_pipeline_dry_run(tmp_path, monkeypatch):
    monkeypatch.delenv("LV_CALL_START", raising=False)
    corpus = make_corpus(tmp_path / "corpus")
    carry = tmp_path / "carry"
    assert pack.main(["--corpus", str(corpus), "--out", str(carry / ".devpack"), "--tree-bytes", "0",
                      "--max-mib", "5", "--regen-engines", "", "--pesq", "0", "--check", "3"]) == 0
    work = tmp_path / "machine"

    # Call 1: stage vae on a fresh machine (setup runs first).
    assert device.main(_driver_args("vae", tmp_path, "out1", work)) == 0
    state = json.loads((tmp_path / "out1" / "state.json").read_text())
    assert state["setup"]["done"] and state["stages"]["vae"]["status"] == "done"
    assert state["stages"]["vae"]["step"] == 4 and state["stages"]["lm"]["status"] == "pending"
    returned = sorted(p.name for p in (tmp_path / "out1").iterdir())
    assert {"kit.json", "kit.part00", "logs.tar.gz", "state.json"} <= set(returned) and len(returned) <= 8
    with tarfile.open(tmp_path / "out1" / "logs.tar.gz") as tar:
        assert "vae/metrics.jsonl" in tar.getnames()

    # The lease is lost: the machine's disk is gone; the kit and state travel back in .devstate.
    # A later call that must continue refuses to start from scratch on a fresh machine without .devstate.
    assert device.main(_driver_args("lm", tmp_path, "refused", tmp_path / "fresh") + ["--continue"]) == 4
    assert not (tmp_path / "refused").exists() and not (tmp_path / "fresh" / "state.json").exists()
    report = fetch.fetch(tmp_path / "out1", None, tmp_path / "fetch1", stash=carry / ".devstate")
    assert report["kit"]["info"]["stage"] == "vae" and report["kit"]["info"]["tensors"] == ["vae."]
    shutil.rmtree(work)

    # Call 2 on a fresh machine: rebuilds the corpus, continues with stage lm from the kit.
    assert device.main(_driver_args("lm", tmp_path, "out2", work) + ["--continue"]) == 0
    state = json.loads((tmp_path / "out2" / "state.json").read_text())
    assert state["restored"] == 1 and state["setup"]["done"]
    assert state["stages"]["vae"]["status"] == "done" and state["stages"]["lm"]["status"] == "done"
    train_log = Path(state["stages"]["lm"]["run_dir"], "train.log").read_text()
    assert "restored/kit-1" in train_log  # init_from = the carried VAE weights

    # Call 3 (machine still warm): export + voices; fetch installs and speaks.
    assert device.main(_driver_args("export", tmp_path, "out3", work) + ["--continue"]) == 0
    dest = tmp_path / "installed" / "default"
    report = fetch.fetch(tmp_path / "out3", dest, tmp_path / "fetch3", max_seconds=1.0)
    assert report["kit"]["info"]["kind"] == "export"
    assert report["verify"]["seconds"] > 0
    assert {"default", "hibari", "joe", "heldout_kokoro_kumo", "heldout_kokoro_gong"} <= set(report["verify"]["voices"])
    summary = json.loads((dest / "training_summary.json").read_text())
    assert summary["stages"]["lm"]["step"] == 4 and summary["stages"]["joint"]["status"] != "done"
    from safetensors import safe_open

    with safe_open(str(dest / "model.safetensors"), framework="pt") as f:
        assert all(f.get_slice(k).get_dtype() in ("F16", "I64", "BOOL", "I32", "U8") for k in f.keys())


def test_plan_fits_the_time_budget(tmp_path):
    args = device.parse_args(["vae", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"),
                              "--budgets", "vae=540", "--rates", "vae=4,lm=3"])
    driver = device.Driver(args)
    st = driver.state["stages"]["vae"]
    plan = driver._plan("vae", st, 0)
    left = 540 - 45.0  # minus the assumed process start-up
    r1, r2 = 4.0, 4.0 / args.gan_slowdown
    assert plan["disc_start"] == int(args.disc_start_fraction * plan["max_steps"])
    spent = plan["disc_start"] / r1 + (plan["max_steps"] - plan["disc_start"]) / r2
    assert spent == pytest.approx(left, rel=0.01)
    # Measured rates and time used: the GAN already runs, so only the GAN rate matters now.
    st.update(seconds=300.0, rate=8.0, rate_gan=2.0, startup_s=20.0)
    later = driver._plan("vae", st, plan["disc_start"] + 10)
    assert later["disc_start"] == plan["disc_start"]
    assert later["max_steps"] == plan["disc_start"] + 10 + int(2.0 * (540 - 300 - 20))
    lm = driver._plan("lm", driver.state["stages"]["lm"], 0)
    assert lm["max_steps"] == int(3.0 * (600 - 45)) and "disc_start" not in lm
    assert driver._needs_calibration("lm", driver.state["stages"]["lm"], 0)
    assert not driver._needs_calibration("vae", st, plan["disc_start"] + 10)
