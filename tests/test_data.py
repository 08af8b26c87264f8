"""Datasets: manifests, corpus readers, validation, prepare, sampler, dataset/collate, latent cache.

Every corpus here is real audio written with soundfile into tmp_path in the format's own layout.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import SENTENCES, make_model, synth_audio
from typer.testing import CliRunner

from llamavoice.cli import app
from llamavoice.data.cache import LatentCache, weights_fingerprint
from llamavoice.data.dataset import TTSDataset, collate
from llamavoice.data.formats import SourceItem, detect_format, read_dataset, scan_dataset
from llamavoice.data.manifest import DatasetError, ManifestEntry, read_manifest, write_manifest
from llamavoice.data.prepare import PrepareOptions, check_and_convert, prepare
from llamavoice.data.sampler import DurationBatchSampler
from llamavoice.errors import LlamaVoiceError


def write(path, seconds: float, sr: int, seed: int = 0, fmt: str | None = None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, synth_audio(seconds, sr, seed), sr, format=fmt)
    return path


# --- manifest ---------------------------------------------------------------------------------


def test_manifest_round_trip_relative_paths(tmp_path):
    audio = write(tmp_path / "corpus" / "wavs" / "a.wav", 1.0, 16000)
    outside = write(tmp_path / "elsewhere" / "b.wav", 1.0, 16000)
    entries = [ManifestEntry(str(audio), "Hello there.", "s1", 1.0, 16000),
               ManifestEntry(str(outside), "Bye.", "s2", 1.0, 16000, "de")]
    path = write_manifest(tmp_path / "corpus" / "manifest.jsonl", entries)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert lines[0]["audio"] == "wavs/a.wav"  # under the manifest's folder: portable
    assert lines[1]["audio"] == str(outside)
    assert read_manifest(path) == entries
    # Moving the whole folder keeps relative paths valid.
    moved = tmp_path / "moved"
    (tmp_path / "corpus").rename(moved)
    assert read_manifest(moved / "manifest.jsonl")[0].audio == str(moved / "wavs" / "a.wav")


@pytest.mark.parametrize("line, needle", [
    ('{"audio": "a.wav", "text": "x"', "not valid JSON"),
    ('{"audio": "a.wav", "text": "x", "speaker": "s"}', "missing field"),
    ('{"audio": "a.wav", "text": "x", "speaker": "s", "duration": -1, "sample_rate": 16000}', "duration"),
    ('{"audio": "a.wav", "text": "x", "speaker": "s", "duration": 1, "sample_rate": 1.5}', "sample_rate"),
    ('["a.wav"]', "JSON object"),
])
def test_manifest_bad_line_names_line_number(tmp_path, line, needle):
    good = json.dumps({"audio": "a.wav", "text": "x", "speaker": "s", "duration": 1.0, "sample_rate": 16000})
    path = tmp_path / "m.jsonl"
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(DatasetError, match=r"line 3") as info:
        read_manifest(path)
    assert needle in str(info.value)
    assert isinstance(info.value, LlamaVoiceError)


# --- readers ----------------------------------------------------------------------------------


def test_ljspeech_reader(tmp_path):
    root = tmp_path / "LJSpeech-1.1"
    write(root / "wavs" / "LJ001-0001.wav", 1.5, 22050, 1)
    write(root / "wavs" / "LJ001-0002.wav", 0.75, 22050, 2)
    (root / "metadata.csv").write_text(
        'LJ001-0001|He said "no, 1 time|He said "no, one time\n'
        "LJ001-0002|Only raw text\n", encoding="utf-8")
    assert detect_format(root) == "ljspeech"
    entries = read_dataset(root)
    assert [e.text for e in entries] == ['He said "no, one time', "Only raw text"]
    assert {e.speaker for e in entries} == {"ljspeech"}
    assert [e.sample_rate for e in entries] == [22050, 22050]
    assert entries[0].duration == pytest.approx(1.5, abs=1e-4)
    assert entries[1].duration == pytest.approx(0.75, abs=1e-4)


def test_ljspeech_malformed_line(tmp_path):
    (tmp_path / "metadata.csv").write_text("LJ001-0001|fine\njust text without separator\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_dataset(tmp_path, "ljspeech")


def test_libritts_reader_prefers_normalized(tmp_path):
    root = tmp_path / "LibriTTS_R"
    ch = root / "train-clean-100" / "84" / "121123"
    write(ch / "84_121123_000007_000001.wav", 1.0, 24000, 1)
    (ch / "84_121123_000007_000001.normalized.txt").write_text("Chapter one.")
    (ch / "84_121123_000007_000001.original.txt").write_text("Chapter 1.")
    write(ch / "84_121123_000008_000000.wav", 2.0, 24000, 2)
    (ch / "84_121123_000008_000000.original.txt").write_text("Only the original.\n")
    ch2 = root / "train-clean-100" / "19" / "198"
    write(ch2 / "19_198_000000_000000.wav", 1.25, 24000, 3)
    (ch2 / "19_198_000000_000000.normalized.txt").write_text("Another speaker.")
    assert detect_format(root) == "libritts"
    entries = {e.audio.rsplit("/", 1)[1]: e for e in read_dataset(root)}
    assert entries["84_121123_000007_000001.wav"].text == "Chapter one."
    assert entries["84_121123_000008_000000.wav"].text == "Only the original."
    assert entries["19_198_000000_000000.wav"].speaker == "19"
    assert entries["84_121123_000008_000000.wav"].speaker == "84"
    assert entries["84_121123_000008_000000.wav"].duration == pytest.approx(2.0, abs=1e-4)


def test_vctk_reader_prefers_mic1_and_reports_missing_audio(tmp_path, caplog):
    root = tmp_path / "VCTK"
    for spk, n in (("p225", 2), ("p226", 1)):
        for k in range(1, n + 1):
            utt = f"{spk}_{k:03d}"
            (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
            (root / "txt" / spk / f"{utt}.txt").write_text(f"Sentence {k} of {spk}.\n")
            write(root / "wav48_silence_trimmed" / spk / f"{utt}_mic2.flac", 1.0, 48000, k, "FLAC")
            write(root / "wav48_silence_trimmed" / spk / f"{utt}_mic1.flac", 0.5 + k, 48000, k, "FLAC")
    (root / "txt" / "p226" / "p226_009.txt").write_text("No audio for this one.")
    assert detect_format(root) == "vctk"
    _, items = scan_dataset(root)
    assert [i.audio for i in items if "p226_009" in i.source] == [""]
    with caplog.at_level("WARNING"):
        entries = read_dataset(root)
    assert "1 of 4" in caplog.text
    assert len(entries) == 3
    assert all(e.audio.endswith("_mic1.flac") for e in entries)
    assert [e.speaker for e in entries] == ["p225", "p225", "p226"]
    assert entries[1].duration == pytest.approx(2.5, abs=1e-4) and entries[1].sample_rate == 48000
    assert entries[1].text == "Sentence 2 of p225."


def test_generic_jsonl_and_csv(tmp_path):
    write(tmp_path / "a" / "1.wav", 1.0, 16000)
    write(tmp_path / "a" / "2.wav", 0.5, 8000)
    (tmp_path / "list.jsonl").write_text(
        json.dumps({"audio": "a/1.wav", "text": "One.", "speaker": 7, "extra": 1}) + "\n"
        + json.dumps({"audio": str(tmp_path / "a" / "2.wav"), "text": "Two.", "speaker": "b", "language": "fr"}) + "\n")
    entries = read_dataset(tmp_path / "list.jsonl")
    assert [(e.speaker, e.language, e.sample_rate) for e in entries] == [("7", "en", 16000), ("b", "fr", 8000)]
    assert entries[0].audio == str(tmp_path / "a" / "1.wav")

    (tmp_path / "list.csv").write_text('audio,text,speaker,language\na/1.wav,"Hello, world.",x,en\na/2.wav,Hi,y,\n')
    entries = read_dataset(tmp_path / "list.csv")
    assert [e.text for e in entries] == ["Hello, world.", "Hi"]
    assert [e.language for e in entries] == ["en", "en"]
    assert entries[1].duration == pytest.approx(0.5, abs=1e-3)

    (tmp_path / "bad.csv").write_text("audio,text\na/1.wav,x\n")
    with pytest.raises(DatasetError, match="speaker"):
        read_dataset(tmp_path / "bad.csv", "manifest")


def test_detect_format_unknown_and_bad_name(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="cannot detect"):
        read_dataset(tmp_path / "empty")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        read_dataset(tmp_path / "empty", "timit")
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "nope")


# --- validation -------------------------------------------------------------------------------


def _bad_audio(tmp_path, kind: str) -> SourceItem:
    sr = 16000
    path = tmp_path / f"{kind}.wav"
    text = "Some words."
    if kind == "missing":
        pass
    elif kind == "corrupt":
        path.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunkjunk" * 10)
    elif kind == "empty_text":
        write(path, 1.0, sr)
        text = "   "
    elif kind == "too_short":
        write(path, 0.3, sr)
    elif kind == "too_short_after_trim":
        audio = np.zeros(2 * sr, dtype=np.float32)
        audio[sr : sr + sr // 5] = synth_audio(0.2, sr, 0)
        sf.write(path, audio, sr)
    elif kind == "too_long":
        write(path, 4.0, sr)
    elif kind == "silent":
        sf.write(path, (1e-5 * np.random.default_rng(0).standard_normal(sr)).astype(np.float32), sr)
    elif kind == "clipped":
        sf.write(path, np.clip(4 * synth_audio(1.0, sr, 0), -1, 1), sr)
    elif kind == "good":
        write(path, 1.0, sr)
    return SourceItem(str(path), text, "s")


@pytest.mark.parametrize("kind, reason", [
    ("missing", "missing_audio"), ("corrupt", "corrupt_audio"), ("empty_text", "empty_text"),
    ("too_short", "too_short"), ("too_short_after_trim", "too_short"), ("too_long", "too_long"),
    ("silent", "silent"), ("clipped", "clipped"), ("good", None),
])
def test_validator_reasons(tmp_path, kind, reason):
    opts = PrepareOptions(sample_rate=24000, min_seconds=0.5, max_seconds=3.0)
    result = check_and_convert(_bad_audio(tmp_path, kind), str(tmp_path / "out.wav"), opts)
    if reason is None:
        assert result["ok"] and (tmp_path / "out.wav").is_file()
        assert result["source_rate"] == 16000
    else:
        assert not result["ok"] and result["reason"] == reason and result["detail"]
        assert not (tmp_path / "out.wav").exists()


# --- prepare ----------------------------------------------------------------------------------


def _padded(seconds: float, sr: int, seed: int, pad: float = 0.5) -> np.ndarray:
    quiet = np.zeros(int(pad * sr), dtype=np.float32)
    return np.concatenate([quiet, synth_audio(seconds, sr, seed), quiet])


def _vctk_corpus(root, speakers=("p1", "p2", "p3"), per_speaker=5, sr=48000):
    for s, spk in enumerate(speakers):
        for k in range(per_speaker):
            utt = f"{spk}_{k:03d}"
            (root / "txt" / spk).mkdir(parents=True, exist_ok=True)
            (root / "txt" / spk / f"{utt}.txt").write_text(SENTENCES[(s + k) % len(SENTENCES)])
            path = root / "wav48" / spk / f"{utt}.wav"
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, _padded(0.8 + 0.1 * k, sr, 10 * s + k), sr)


def test_prepare_end_to_end(tmp_path):
    src = tmp_path / "vctk"
    _vctk_corpus(src)
    sf.write(src / "wav48" / "p1" / "p1_000.wav", np.zeros(48000, dtype=np.float32), 48000)  # silent
    (src / "txt" / "p2" / "p2_001.txt").write_text("  \n")  # empty text
    (src / "wav48" / "p3" / "p3_002.wav").write_bytes(b"not audio at all" * 50)  # corrupt
    out = tmp_path / "prepared"
    report = prepare(src, out, sample_rate=24000, val_fraction=0.4, progress=False)

    assert report.skipped["silent"] == 1 and report.skipped["empty_text"] == 1
    assert report.skipped["corrupt_audio"] == 1 and sum(report.skipped.values()) == 3
    skipped = [json.loads(x) for x in (out / "skipped.jsonl").read_text().splitlines()]
    assert sorted(r["reason"] for r in skipped) == ["corrupt_audio", "empty_text", "silent"]

    train, val = read_manifest(out / "manifest.jsonl"), read_manifest(out / "val.jsonl")
    assert len(train) + len(val) == 12 and report.kept == len(train) and report.val == len(val)
    assert not {e.audio for e in train} & {e.audio for e in val}
    for split in (train, val):  # each speaker present in a split has at least two utterances there
        counts = {s: sum(e.speaker == s for e in split) for s in {e.speaker for e in split}}
        assert min(counts.values()) >= 2
    for e in train + val:
        info = sf.info(e.audio)
        assert info.samplerate == 24000 and e.sample_rate == 24000
        assert e.audio.startswith(str(out / "wavs"))
        # 0.5 s of silence on both sides was trimmed down to the 50 ms margins.
        k = int(e.audio.rsplit("_", 1)[1][:3])
        assert e.duration == pytest.approx(0.8 + 0.1 * k + 0.1, abs=0.03)
        assert info.frames / 24000 == pytest.approx(e.duration, abs=1e-3)

    stats = json.loads((out / "stats.json").read_text())
    assert stats["count"] == 12 and stats["num_speakers"] == 3
    assert stats["splits"] == {"train": len(train), "val": len(val)}
    assert sum(s["count"] for s in stats["speakers"].values()) == 12
    assert stats["hours"] == pytest.approx(sum(e.duration for e in train + val) / 3600, abs=1e-4)
    assert stats["duration_seconds"]["min"] <= stats["duration_seconds"]["p50"] <= stats["duration_seconds"]["max"]
    assert (out / "durations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    with pytest.raises(DatasetError, match="already holds"):
        prepare(src, out, progress=False)
    with pytest.raises(DatasetError, match="source folder"):
        prepare(src, src, progress=False)


def test_prepare_cli_and_workers(tmp_path):
    src = tmp_path / "vctk"
    _vctk_corpus(src, speakers=("a", "b"), per_speaker=3, sr=16000)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["prepare", str(src), str(out), "--workers", "2", "--sample-rate", "22050"])
    assert result.exit_code == 0, result.output
    assert "kept 6 utterances" in result.output
    entries = read_manifest(out / "manifest.jsonl")
    assert len(entries) == 6 and {sf.info(e.audio).samplerate for e in entries} == {22050}
    assert "upsampled" in result.output  # 16 kHz sources are flagged
    bad = CliRunner().invoke(app, ["prepare", str(tmp_path / "missing"), str(tmp_path / "o2")])
    assert isinstance(bad.exception, DatasetError) and "not found" in str(bad.exception)


# --- sampler ----------------------------------------------------------------------------------


def _durations(n=400, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 12.0, n)


def _flat(batches):
    return sorted(i for b in batches for i in b)


@pytest.mark.parametrize("max_batch_size", [None, 5])
def test_sampler_budget_and_coverage(max_batch_size):
    d = _durations()
    s = DurationBatchSampler(d, 40.0, seed=3, max_batch_size=max_batch_size)
    for epoch in range(3):
        s.set_epoch(epoch)
        batches = list(s)
        assert len(batches) == len(s)
        assert all(len(b) * d[b].max() <= 40.0 for b in batches)
        assert _flat(batches) == list(range(len(d)))
        if max_batch_size:
            assert max(len(b) for b in batches) <= max_batch_size
    # Bucketing works: padding wastes little of the budget compared with the audio itself.
    padded = sum(len(b) * d[b].max() for b in batches)
    assert d.sum() / padded > 0.85


def test_sampler_deterministic_and_epoch_dependent():
    d = _durations()
    a, b = DurationBatchSampler(d, 40.0, seed=1), DurationBatchSampler(d, 40.0, seed=1)
    assert list(a) == list(b)
    a.set_epoch(1)
    assert list(a) != list(b)
    b.set_epoch(1)
    assert list(a) == list(b)
    assert list(DurationBatchSampler(d, 40.0, seed=2)) != list(DurationBatchSampler(d, 40.0, seed=1))
    ordered = DurationBatchSampler(d, 40.0, shuffle=False)
    first = list(ordered)
    ordered.set_epoch(5)
    assert list(ordered) == first and [i for b in first for i in b] == list(np.argsort(d, kind="stable"))


def test_sampler_resume_mid_epoch():
    d = _durations()
    s = DurationBatchSampler(d, 40.0, seed=7)
    s.set_epoch(2)
    full = list(s)
    it = iter(s)
    for _ in range(5):
        next(it)
    state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint round trip
    assert state["epoch"] == 2 and state["batches_yielded"] == 5

    resumed = DurationBatchSampler(d, 40.0, seed=7)
    resumed.load_state_dict(state)
    resumed.set_epoch(2)  # the training loop re-selects the same epoch: the position is kept
    assert len(resumed) == len(full) - 5
    assert list(resumed) == full[5:]
    assert len(list(resumed)) == len(full)  # the next pass over that epoch is complete again
    resumed.set_epoch(3)
    s.set_epoch(3)
    assert list(resumed) == list(s)

    # Counting consumed batches explicitly (a DataLoader prefetches ahead of the loop).
    explicit = DurationBatchSampler(d, 40.0, seed=7)
    explicit.load_state_dict(s.state_dict(batches_consumed=3) | {"epoch": 2})
    assert list(explicit) == full[3:]
    with pytest.raises(DatasetError, match="different settings"):
        DurationBatchSampler(d[:-1], 40.0, seed=7).load_state_dict(state)


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_ddp_split(drop_last):
    d = _durations(n=203)
    ranks = [DurationBatchSampler(d, 30.0, seed=5, num_replicas=3, rank=r, drop_last=drop_last) for r in range(3)]
    for epoch in (0, 1):
        per_rank = []
        for s in ranks:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len({len(b) for b in per_rank}) == 1  # same number of steps on every rank
        flat = [_flat(b) for b in per_rank]
        for i in range(3):
            for j in range(i + 1, 3):
                assert not set(flat[i]) & set(flat[j])
        union = sorted(sum(flat, []))
        if drop_last:
            assert len(union) == len(set(union)) and set(union) <= set(range(len(d)))
        else:
            assert union == list(range(len(d)))
        assert all(len(b) * d[b].max() <= 30.0 for batches in per_rank for b in batches)


def test_sampler_leaves_out_items_over_budget(caplog):
    d = np.array([1.0, 2.0, 50.0, 3.0])
    with caplog.at_level("WARNING"):
        s = DurationBatchSampler(d, 10.0)
    assert s.num_too_long == 1 and "longer than the batch budget" in caplog.text
    assert _flat(list(s)) == [0, 1, 3]
    with pytest.raises(DatasetError):
        DurationBatchSampler([20.0], 10.0)


# --- dataset and collate ----------------------------------------------------------------------


def _corpus(tmp_path, sr=16000):
    entries = []
    for s in range(3):
        for k in range(3):
            secs = 1.0 + 0.5 * k + 0.1 * s
            path = write(tmp_path / f"s{s}" / f"{k}.wav", secs, sr, 10 * s + k)
            entries.append(ManifestEntry(str(path), SENTENCES[(3 * s + k) % len(SENTENCES)], f"spk{s}", secs, sr))
    lone = write(tmp_path / "lone.wav", 1.0, sr, 99)
    entries.append(ManifestEntry(str(lone), "Alone.", "lonely", 1.0, sr))
    return entries


def test_dataset_prompts_from_other_utterance_of_same_speaker(tmp_path, tokenizer, caplog):
    entries = _corpus(tmp_path)
    with caplog.at_level("WARNING"):
        ds = TTSDataset(entries, tokenizer, 24000, max_prompt_seconds=1.2, seed=4)
    assert len(ds) == 9 and ds.num_excluded == 1 and "single utterance" in caplog.text
    assert "lonely" not in ds.speakers
    choices = {}
    for epoch in range(4):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            j = item["prompt_index"]
            assert j != i and ds.entries[j].speaker == ds.entries[i].speaker == item["speaker"]
            assert item["text"].tolist() == tokenizer.encode(ds.entries[i].text)
            assert item["audio"].dtype == torch.float32 and item["audio"].ndim == 1
            assert len(item["audio"]) == pytest.approx(ds.entries[i].duration * 24000, abs=2)
            assert 0 < len(item["prompt_audio"]) <= int(1.2 * 24000)
            choices[epoch, i] = (j, ds.prompt_choice(i)[1])
    # The prompt is a contiguous crop of the chosen utterance, starting where prompt_choice says.
    ds.set_epoch(1)
    item = ds[4]
    j, start = ds.prompt_choice(4)
    from llamavoice.audio import load_audio

    full, _ = load_audio(ds.entries[j].audio, 24000)
    s0 = int(round(start * 24000))
    np.testing.assert_array_equal(item["prompt_audio"].numpy(), full[s0 : s0 + len(item["prompt_audio"])])
    # Deterministic given (seed, epoch, index); different across epochs.
    other = TTSDataset(entries, tokenizer, 24000, max_prompt_seconds=1.2, seed=4)
    other.set_epoch(2)
    assert all(choices[2, i] == (other.prompt_choice(i)[0], other.prompt_choice(i)[1]) for i in range(9))
    assert any(choices[0, i] != choices[1, i] for i in range(9))


def test_prompt_draws_match_the_per_item_candidate_lists(tmp_path, tokenizer):
    """Per-speaker candidates draw exactly what per-item lists of the other clips (long enough ones first) drew,
    so a run resumed across this change picks the same prompts; clips too short are used only as a last resort."""
    entries = _corpus(tmp_path)[:-1]  # spk0: 1.0, 1.5, 2.0 s; spk1: 1.1, 1.6, 2.1 s; spk2: 1.2, 1.7, 2.2 s
    ds = TTSDataset(entries, tokenizer, 24000, min_prompt_seconds=1.55, max_prompt_seconds=3.0, seed=9)
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i, entry in enumerate(ds.entries):
            others = [j for j, e in enumerate(ds.entries) if e.speaker == entry.speaker and j != i]
            long_enough = [j for j in others if ds.entries[j].duration >= 1.55]
            cands = long_enough or others
            expected = cands[int(np.random.default_rng([9, epoch, i]).integers(len(cands)))]
            assert ds.prompt_choice(i)[0] == expected
    # Wanting 2.15 s only the longest clip of a speaker qualifies: every peer's prompt; its own is a short one.
    ds = TTSDataset(entries, tokenizer, 24000, min_prompt_seconds=2.15, max_prompt_seconds=3.0, seed=9)
    longest = max(range(len(ds)), key=lambda i: ds.entries[i].duration)
    assert all(ds.prompt_choice(i)[0] == longest for i in range(len(ds))
               if ds.entries[i].speaker == ds.entries[longest].speaker and i != longest)
    assert ds.prompt_choice(longest)[0] != longest


def test_dataset_needs_two_utterances_per_speaker(tmp_path, tokenizer):
    entries = _corpus(tmp_path)[-1:]
    with pytest.raises(DatasetError, match="at least two utterances"):
        TTSDataset(entries, tokenizer, 24000)


def test_collate_and_loader_feed_the_model(tmp_path, tokenizer):
    ds = TTSDataset(_corpus(tmp_path), tokenizer, 24000, max_prompt_seconds=1.0)
    items = [ds[i] for i in (0, 4, 8)]
    batch = collate(items)
    assert batch.text.shape == (3, max(len(it["text"]) for it in items)) and batch.text.dtype == torch.long
    assert batch.audio.shape == (3, max(len(it["audio"]) for it in items))
    assert batch.prompt_audio.shape == (3, max(len(it["prompt_audio"]) for it in items))
    assert batch.audio_lengths.tolist() == [len(it["audio"]) for it in items]
    assert batch.text_lengths.tolist() == [len(it["text"]) for it in items]
    assert batch.prompt_lengths.tolist() == [len(it["prompt_audio"]) for it in items]
    for k, it in enumerate(items):
        torch.testing.assert_close(batch.audio[k, : len(it["audio"])], it["audio"])
        assert not batch.audio[k, len(it["audio"]) :].any()

    sampler = DurationBatchSampler(ds.durations, 6.0, seed=0)
    loader = torch.utils.data.DataLoader(ds, batch_sampler=sampler, collate_fn=collate)
    batches = list(loader)
    assert sum(b.audio.shape[0] for b in batches) == len(ds)
    assert all(b.audio.shape[0] * b.audio.shape[1] <= 6.0 * 24000 + 2 * b.audio.shape[0] for b in batches)
    model = make_model(tokenizer)
    losses = model.lm_losses(batches[0])
    assert torch.isfinite(losses["total"])


# --- latent cache -----------------------------------------------------------------------------


def test_latent_cache_round_trip(tmp_path):
    audio = write(tmp_path / "a.wav", 1.0, 16000)
    cache = LatentCache(tmp_path / "cache", model_key="vae-1")
    assert cache.get(audio) is None
    mu, logstd = torch.randn(25, 8), torch.randn(25, 8)
    cache.put(audio, mu, logstd)
    got = cache.get(audio)
    assert got is not None and audio in cache
    torch.testing.assert_close(got[0], mu)
    torch.testing.assert_close(got[1], logstd)
    assert LatentCache(tmp_path / "cache", model_key="vae-2").get(audio) is None  # other model: miss
    write(tmp_path / "a.wav", 1.5, 16000)  # the audio changed: miss, not a stale hit
    assert cache.get(audio) is None
    cache.put(audio, mu, logstd)
    cache.path(audio).write_bytes(b"garbage")
    assert cache.get(audio) is None
    with pytest.raises(DatasetError):
        cache.put(audio, mu, logstd[:3])

    layer = torch.nn.Linear(4, 4)
    before = weights_fingerprint(layer, {"latent_dim": 8})
    assert before == weights_fingerprint(layer, {"latent_dim": 8})
    assert before != weights_fingerprint(layer, {"latent_dim": 16})
    with torch.no_grad():
        layer.weight[0, 0] += 1e-3
    assert before != weights_fingerprint(layer, {"latent_dim": 8})
