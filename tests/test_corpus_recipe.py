"""Tests of the offline corpus recipe (recipes/data): text pipeline, planning, resume, audio post-
processing, and one tiny end-to-end build with espeak-ng (skipped where it is not installed)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import soundfile as sf

from llamavoice.errors import LlamaVoiceError, TextError
from recipes.data import build_corpus as bc
from recipes.data import speaker_similarity as ss
from recipes.data import text_pipeline as tp
from recipes.data import voices as vc

# ---------------------------------------------------------------------------------------------
# Text pipeline


def test_split_sentences_respects_abbreviations_and_initials():
    text = "Mr. Smith met Dr. J. R. Jones at 5 p.m. today. Was it late? No! It was 3.5 hours early."
    assert tp.split_sentences(text) == [
        "Mr. Smith met Dr. J. R. Jones at 5 p.m. today.",
        "Was it late?",
        "No!",
        "It was 3.5 hours early.",
    ]


def test_split_sentences_keeps_closing_quotes_with_their_sentence():
    out = tp.split_sentences('He said, "Come on down." But the fly was too clever.')
    assert out == ['He said, "Come on down."', "But the fly was too clever."]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("the young wheat shone silkily", "The young wheat shone silkily."),
        ("Q: How many hackers does it take?", "How many hackers does it take?"),
        ("I'm afraid of widths -- really afraid.", "I'm afraid of widths, really afraid."),
        ("\u201cQuoted\u201d words \u2014 typographic ones\u2026", '"Quoted" words, typographic ones...'),
        ('He said "hello and left.', "He said hello and left."),
        ("5: Fruit salad without cherries is sad.", "Fruit salad without cherries is sad."),
        ("It costs $45 (or 30%) today!", "It costs $45 (or 30%) today!"),
        ('"...A strange enigma is man!"', '"A strange enigma is man!"'),
        ("...and scantily clad critics, of course.", "And scantily clad critics, of course."),
    ],
)
def test_clean_sentence_light_cleanup(raw, expected):
    assert tp.clean_sentence(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "int main() { return 0; }",          # code
        "see http://example.com/page now",   # url
        "THIS IS A HEADLINE ABOUT THINGS",   # shouting
        "Too short.",                        # 2 words
        "Ooohhhh that is much better",       # noise
        "caf\u00e9 au lait is not ascii text",  # non-ASCII
        'It is just a ploy to make parents miserable." "...',   # crashed festival (segfault)
        'Calls to "creat()" include read permissions.',         # code
        'A giant "?" lights up in the dashboard.',
    ],
)
def test_clean_sentence_drops_unspeakable_lines(raw):
    assert tp.clean_sentence(raw) is None


def test_word_length_filter_bounds():
    three = "One two three."
    thirty = "Word " + " ".join(["word"] * 29) + "."
    assert tp.clean_sentence(three) == three
    assert tp.clean_sentence(thirty) == thirty
    assert tp.clean_sentence(" ".join(["word"] * 31) + ".") is None
    assert tp.clean_sentence("One two three.", min_words=4) is None


def test_fortunes_attribution_code_and_art_removed(tmp_path):
    (tmp_path / "quotes").write_text(
        "A black cat crossing your path signifies that the animal is going somewhere.\n"
        "\t\t-- Groucho Marx\n%\n"
        "#include <stdio.h>\nint main(void) { printf(\"hi\"); }\n%\n"
        "        /\\_/\\\n       ( o.o )\n        > ^ <\n%\n"
        "Moral:  There is no safety in numbers, or in anything else.\n"
        "\t\t-- James Thurber, \"The Fairly Intelligent Fly\"\n"
    )
    (tmp_path / "quotes.dat").write_bytes(b"\x00\x01binary index")
    (tmp_path / "excluded").write_text("This file is excluded on purpose today.\n")
    raw = tp.read_fortunes(tmp_path, exclude=("excluded",))
    pool, report = tp.clean_pool(raw)
    assert [s.text for s in pool] == [
        "A black cat crossing your path signifies that the animal is going somewhere.",
        "There is no safety in numbers, or in anything else.",
    ]
    assert all(s.source == "fortunes:quotes" for s in pool)
    assert report["kept"] == 2


def test_wordnet_examples_are_read_from_glosses(tmp_path):
    (tmp_path / "data.verb").write_text(
        "  1 This software and database is being provided to you, the LICENSEE\n"
        '00001740 29 v 04 breathe 0 take_a_breath 0 | draw air into, and expel out of, the lungs; '
        '"I can breathe better when the air is clean"; "The patient is respiring"  \n'
        '00002325 29 v 01 respire 1 | undergo the biomedical process; "hold your breath"  \n'
    )
    texts = [s.text for s in tp.read_wordnet(tmp_path)]
    assert texts == ["I can breathe better when the air is clean", "The patient is respiring",
                     "hold your breath"]
    with pytest.raises(TextError, match="wordnet-base"):
        tp.read_wordnet(tmp_path / "nowhere")


def test_dedup_is_case_and_punctuation_insensitive_and_order_free():
    raw = [tp.Sentence(t, "x") for t in
           ["Hold your breath!", "hold your breath", "HOLD, your breath.", "Exhale when you lift."]]
    pool, report = tp.clean_pool(raw)
    assert len(pool) == 2 and report["duplicates"] == 2 and report["dropped_by_filter"] == 0
    pool_rev, _ = tp.clean_pool(list(reversed(raw)))
    assert [s.key for s in pool] == [s.key for s in pool_rev]


def _word(i: int) -> str:
    """A distinct made-up word per integer (letters only, so it is not a 'number' sentence)."""
    w = ""
    while True:
        w += "bdfgklmnprstvz"[i % 14] + "aeiou"[(i // 14) % 5]
        i //= 70
        if i == 0:
            return w


def _synthetic_pool(n: int = 600) -> list[tp.Sentence]:
    """10 % questions, 10 % exclamations, 5 % with digits, the rest plain statements."""
    out = []
    for i in range(n):
        w = _word(i)
        if i % 10 == 0:
            t = f"Is the {w} ready to ship today?"
        elif i % 10 == 1:
            t = f"What a lovely {w} this is!"
        elif i % 20 == 2:
            t = f"The {w} costs {i} dollars."
        else:
            t = f"The quick brown {w} jumps over the lazy dog."
        out.append(tp.Sentence(t, "synthetic"))
    return out


def test_heldout_split_is_disjoint_deterministic_and_covers_special_sentences():
    pool = _synthetic_pool()
    train, held = tp.split_heldout(pool, 50, seed=7)
    assert len(held) == 50 and len(train) == len(pool) - 50
    assert not {s.key for s in train} & {s.key for s in held}
    counts = tp.text_counts(held)
    assert counts["questions"] >= 5 and counts["exclamations"] >= 5 and counts["with_numbers"] >= 5
    train2, held2 = tp.split_heldout(list(reversed(pool)), 50, seed=7)
    assert [s.text for s in held2] == [s.text for s in held]
    _, held3 = tp.split_heldout(pool, 50, seed=8)
    assert [s.text for s in held3] != [s.text for s in held]
    with pytest.raises(TextError):
        tp.split_heldout(pool[:10], 10, seed=1)


def test_ordered_pool_is_seeded_and_boosts_questions_and_exclamations():
    pool = _synthetic_pool(2000)
    a = tp.ordered_pool(pool, seed=3)
    assert [s.text for s in a] == [s.text for s in tp.ordered_pool(list(reversed(pool)), seed=3)]
    assert [s.text for s in a] != [s.text for s in tp.ordered_pool(pool, seed=4)]
    first = a[:500]
    share = sum(tp.is_special(s.text) for s in first) / len(first)
    assert share > 0.3  # 25 % of the pool; a boost of 2 puts ~40 % of the first quarter there


# ---------------------------------------------------------------------------------------------
# Planning


def _specs():
    a = vc.VoiceSpec("a", "espeak", "en-us", weight=2.0)
    b = vc.VoiceSpec("b", "espeak", "en-gb", weight=1.0)
    c = vc.VoiceSpec("c", "espeak", "en-us+f3", weight=1.0)
    h = vc.VoiceSpec("h", "espeak", "en-gb+f2")
    return [a, b, c], [h]


def test_plan_shares_hours_by_weight_and_keeps_heldout_sentences_out_of_training():
    pool = _synthetic_pool(3000)
    train_pool, held = tp.split_heldout(pool, 20, seed=1)
    train_specs, held_specs = _specs()
    args = (train_pool, held, train_specs, held_specs)
    jobs = bc.plan_jobs(*args, hours=0.5, seed=1, heldout_readers=2)
    assert jobs == bc.plan_jobs(*args, hours=0.5, seed=1, heldout_readers=2)
    train = [j for j in jobs if j["split"] == "train"]
    est = {s.name: sum(j["est"] for j in train if j["speaker"] == s.name) for s in train_specs}
    assert est["a"] == pytest.approx(900.0, abs=10) and est["b"] == pytest.approx(450.0, abs=10)
    held_keys = {tp.dedup_key(s.text) for s in held}
    assert not {tp.dedup_key(j["text"]) for j in train} & held_keys
    # each training sentence is read by one speaker only while the pool lasts
    assert len({j["text"] for j in train}) == len(train)
    hs = [j for j in jobs if j["split"] == "heldout_sentences"]
    assert len(hs) == 40 and {j["speaker"] for j in hs} == {"a", "b", "c"}
    hk = [j for j in jobs if j["split"] == "heldout_speakers"]
    assert {j["speaker"] for j in hk} == {"h"} and {tp.dedup_key(j["text"]) for j in hk} == held_keys
    assert all(j["audio"] == f"wavs/{j['speaker']}/{j['utt_id']}.wav" for j in jobs)
    assert len({j["utt_id"] for j in jobs}) == len(jobs)


def test_plan_reuses_sentences_with_suffix_when_pool_is_small():
    pool = _synthetic_pool(40)
    train_specs, _ = _specs()
    jobs = bc.plan_jobs(pool, [], train_specs, [], hours=0.2, seed=1)
    assert any(j["utt_id"].endswith("_r1") for j in jobs)
    assert len({j["utt_id"] for j in jobs}) == len(jobs)


def test_choose_heldout_falls_back_when_requested_voice_is_missing():
    kept = ["hibari", "joe", "flite_awb", "fest_ked"]
    held, notes = bc.choose_heldout(kept, ["kokoro_kumo", "joe"], 2)
    assert held == ["joe", "flite_awb"]
    assert any("kokoro_kumo" in n for n in notes)
    with pytest.raises(LlamaVoiceError):
        bc.choose_heldout(["hibari", "joe"], ["hibari", "joe"], 2)


def test_wav_ok_accepts_only_finished_corpus_files(tmp_path):
    good = tmp_path / "good.wav"
    sf.write(good, np.zeros(24000, np.float32) + 0.01, 24000, subtype="PCM_16")
    assert bc.wav_ok(good) == pytest.approx(1.0)
    wrong_sr = tmp_path / "sr.wav"
    sf.write(wrong_sr, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    wrong_fmt = tmp_path / "float.wav"
    sf.write(wrong_fmt, np.zeros(24000, np.float32), 24000, subtype="FLOAT")
    truncated = tmp_path / "trunc.wav"
    truncated.write_bytes(good.read_bytes()[:30])
    tiny = tmp_path / "tiny.wav"
    sf.write(tiny, np.zeros(100, np.float32), 24000, subtype="PCM_16")
    for p in (wrong_sr, wrong_fmt, truncated, tiny, tmp_path / "missing.wav"):
        assert bc.wav_ok(p) is None, p.name


def test_select_distinct_drops_lower_priority_voice_of_a_close_pair():
    names = ["a", "b", "c"]
    sim = np.array([[1.0, 0.85, 0.5], [0.85, 1.0, 0.6], [0.5, 0.6, 1.0]])
    kept, dropped = ss.select_distinct(names, sim, 0.8, priority=["b", "a", "c"])
    assert kept == ["b", "c"] and dropped == [{"speaker": "a", "too_close_to": "b", "cosine": 0.85}]
    summary = ss.pair_summary(names, sim)
    assert summary["max"] == 0.85 and summary["min"] == 0.5 and summary["closest_pair"] == ["a", "b"]


# ---------------------------------------------------------------------------------------------
# Audio post-processing


def test_k_weighting_matches_bs1770_coefficients_at_48k():
    (b1, a1), (b2, a2) = vc._biquad_shelf_highpass(48000)
    np.testing.assert_allclose(b1, [1.53512485958697, -2.69169618940638, 1.19839281085285], atol=1e-9)
    np.testing.assert_allclose(a1, [1.0, -1.69065929318241, 0.73248077421585], atol=1e-9)
    np.testing.assert_allclose(a2, [1.0, -1.99004745483398, 0.99007225036621], atol=1e-9)
    np.testing.assert_allclose(b2, [1.0, -2.0, 1.0])


def test_loudness_of_full_scale_1k_sine_and_normalization():
    sr = 24000
    t = np.arange(3 * sr) / sr
    sine = np.sin(2 * np.pi * 997 * t).astype(np.float32)
    assert vc.integrated_loudness(sine, sr) == pytest.approx(-3.01, abs=0.1)
    quiet = 0.01 * sine
    out = vc.loudness_normalize(quiet, sr)
    assert vc.integrated_loudness(out, sr) == pytest.approx(vc.TARGET_LUFS, abs=0.05)
    loud = vc.loudness_normalize(sine, sr, target_lufs=0.0)   # would clip: capped at -1 dBFS
    assert np.max(np.abs(loud)) == pytest.approx(vc.PEAK_LIMIT, rel=1e-5)
    with pytest.raises(RuntimeError, match="silent"):
        vc.loudness_normalize(np.zeros(sr, np.float32), sr)


def test_resampling_and_filtering_agree_with_and_without_scipy():
    pytest.importorskip("scipy")
    pytest.importorskip("torchaudio")
    sr = 22050
    t = np.arange(sr // 2) / sr
    x = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 3000 * t)).astype(np.float32)
    for ratio in (1.0, 2 ** (600 / 1200), 2 ** (-400 / 1200)):   # plain, and the pitch trick
        a = vc.resample(x, sr * ratio, 24000, use_scipy=True)
        b = vc.resample(x, sr * ratio, 24000, use_scipy=False)
        assert abs(len(a) - round(len(x) * 24000 / (sr * ratio))) <= 2 and abs(len(a) - len(b)) <= 2
        n = min(len(a), len(b))
        mid = slice(n // 10, n - n // 10)
        assert np.sqrt(np.mean((a[:n][mid] - b[:n][mid]) ** 2)) < 0.01
    (b1, a1), _ = vc._biquad_shelf_highpass(24000)
    y_scipy = vc._lfilter(b1, a1, x, use_scipy=True)
    np.testing.assert_allclose(y_scipy, vc._lfilter(b1, a1, x, use_scipy=False), atol=1e-6)


def test_pitch_trick_scales_frequency_and_keeps_duration():
    sr = 24000
    x = np.sin(2 * np.pi * 200 * np.arange(2 * sr) / sr).astype(np.float32)
    ratio = 2 ** (600 / 1200)
    # An engine asked to speak `ratio` times slower yields `ratio` times more samples ...
    slow = np.sin(2 * np.pi * 200 * np.arange(int(2 * sr * ratio)) / sr).astype(np.float32)
    y = vc.resample(slow, sr * ratio, sr)
    assert len(y) == pytest.approx(len(x), abs=2)   # ... and resampling brings the duration back
    spec = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert np.argmax(spec) * sr / len(y) == pytest.approx(200 * ratio, rel=0.01)


def test_trim_silence_leaves_fixed_padding():
    sr = 24000
    x = np.concatenate([np.zeros(sr), 0.5 * np.ones(sr // 2), np.zeros(2 * sr)]).astype(np.float32)
    y = vc.trim_silence(x, sr)
    assert len(y) == pytest.approx(sr // 2 + 2 * int(vc.EDGE_PAD_S * sr), abs=2 * sr // 100)


# ---------------------------------------------------------------------------------------------
# End to end, tiny, with the fastest engine


SENTENCES = """The quick brown fox jumps over the lazy dog.
Did you really pay 45 dollars for that old book?
What a wonderful surprise this is!
She sighed sadly and looked out over the grey sea.
When you have to hiccup, drink a glass of cold water.
A lot of people are afraid of heights.
The mountain climber started to breathe faster.
Give him my kind regards when you see him.
The storms had died away by the evening.
Every detail has been thought out carefully.
Stick to your principles and you will be fine.
The state has lowered its income tax again.
"""


@pytest.mark.skipif(shutil.which("espeak-ng") is None,
                    reason="espeak-ng binary not installed (apt-get install espeak-ng)")
def test_tiny_build_end_to_end_and_resume(tmp_path, capsys):
    text = tmp_path / "sentences.txt"
    text.write_text(SENTENCES)
    out = tmp_path / "corpus"
    argv = ["--out", str(out), "--hours", "0.004", "--no-fortunes", "--no-wordnet", "--text-file", str(text),
            "--voices", "espeak_us_f,espeak_gb_m", "--heldout-speakers", "espeak_gb_m",
            "--n-heldout-speakers", "1", "--heldout-sentences", "2", "--heldout-readers", "1",
            "--no-screen", "--no-final-similarity", "--workers", "2", "--min-speakers", "2"]
    assert bc.main(argv) == 0
    rows = {k: [json.loads(ln) for ln in (out / name).read_text().splitlines()]
            for k, name in bc.MANIFESTS.items()}
    assert len(rows["train"]) >= 4 and len(rows["heldout_sentences"]) == 2
    assert len(rows["heldout_speakers"]) == 2
    for r in sum(rows.values(), []):
        assert set(r) == {"audio", "text", "speaker", "duration", "sample_rate", "language"}
        info = sf.info(out / r["audio"])
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "PCM_16")
        assert r["duration"] == pytest.approx(info.frames / 24000, abs=1e-3) and r["duration"] > 0.5
        audio, _ = sf.read(out / r["audio"])
        assert 0.01 < np.max(np.abs(audio)) <= vc.PEAK_LIMIT + 1e-3
    assert {r["speaker"] for r in rows["train"]} == {"espeak_us_f"}
    assert {r["speaker"] for r in rows["heldout_speakers"]} == {"espeak_gb_m"}
    held = {r["text"] for r in rows["heldout_speakers"]}
    assert held == {r["text"] for r in rows["heldout_sentences"]}
    assert not held & {r["text"] for r in rows["train"]}
    assert set((out / "heldout_sentences.txt").read_text().splitlines()) == held
    stats = json.loads((out / "stats.json").read_text())
    n_all = sum(len(v) for v in rows.values())
    assert stats["per_speaker"]["espeak_us_f"]["utterances"] == n_all - 2
    assert stats["total_hours"] == pytest.approx(sum(r["duration"] for v in rows.values() for r in v) / 3600,
                                                 abs=1e-3)
    assert (out / "durations.png").stat().st_size > 1000

    # Resume: nothing to do; then a deleted and a corrupted wav are rendered again, nothing else.
    stale = out / "wavs" / "espeak_us_f" / "espeak_us_f_000000000000.wav.999.part"
    stale.write_bytes(b"half-written")
    assert bc.main(argv) == 0
    assert not stale.exists()
    log = [json.loads(ln) for ln in (out / "build_log.jsonl").read_text().splitlines()]
    assert log[-1]["rendered"] == 0 and log[-1]["skipped_existing"] == n_all
    (out / rows["train"][0]["audio"]).unlink()
    (out / rows["train"][1]["audio"]).write_bytes(b"RIFF....garbage")
    argv[argv.index("--workers") + 1] = "1"          # not part of the plan: may change on resume
    assert bc.main(argv) == 0
    log = [json.loads(ln) for ln in (out / "build_log.jsonl").read_text().splitlines()]
    assert log[-1]["rendered"] == 2 and log[-1]["skipped_existing"] == n_all - 2
    assert len((out / "manifest_train.jsonl").read_text().splitlines()) == len(rows["train"])

    # Changed settings are refused instead of silently mixing two plans.
    capsys.readouterr()
    assert bc.main([*argv[:3], "0.01", *argv[4:]]) == 2
    assert "different settings (hours)" in capsys.readouterr().err
