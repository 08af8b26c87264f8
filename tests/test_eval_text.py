"""ASR text normalization and WER/CER on known pairs (no audio, no models)."""

from __future__ import annotations

import pytest

from llamavoice.errors import TextError
from llamavoice.eval.text_norm import normalize_for_asr, unify_compounds

jiwer = pytest.importorskip("jiwer", reason="jiwer is part of the [eval] extra: pip install -e '.[eval]'")

from llamavoice.eval.metrics import ErrorCounts, cer, char_errors, wer, word_errors  # noqa: E402


@pytest.mark.parametrize(
    ("written", "transcribed"),
    [
        ("It's 42 degrees!", "It's forty-two degrees."),
        ("Dr. Smith paid $3.50.", "Doctor Smith paid three dollars and fifty cents"),
        ("Meet me at 7:30 p.m.", "meet me at seven thirty PM"),
        ("The 1990s were loud", "the nineteen nineties were loud"),
        ("Five percent", "5%"),
        ("don’t STOP", "Don't stop."),
        ("OK, fine", "Okay fine"),
        ("a well-known fact", "A well known fact"),
    ],
)
def test_spelling_conventions_normalize_alike(written: str, transcribed: str) -> None:
    assert normalize_for_asr(written) == normalize_for_asr(transcribed)
    assert wer(written, transcribed) == 0.0


def test_normalized_text_is_lowercase_words_without_punctuation() -> None:
    out = normalize_for_asr('He said: "Hi!" -- then, um, left... (quickly)')
    assert out == "he said hi then left quickly"


def test_compounds_are_unified_in_both_directions() -> None:
    ref, hyp = unify_compounds("she sells seashells by the sea shore", "she sells sea shells by the seashore")
    assert ref == hyp
    assert wer("an e-mail", "an email") == 0.0
    # A real error is not hidden: 'sea' + 'shore' stays split when both sides split it.
    assert unify_compounds("sea shore", "sea shore") == ("sea shore", "sea shore")
    assert wer("the cat sat", "the cats at") > 0


def test_wrong_transcript_counts_errors() -> None:
    counts = word_errors("the quick brown fox", "the quick brown box jumps")
    assert counts == ErrorCounts(substitutions=1, deletions=0, insertions=1, reference_length=4)
    assert wer("the quick brown fox", "the quick brown box jumps") == pytest.approx(0.5)
    assert wer("the quick brown fox", "") == 1.0
    assert cer("abc", "abd") == pytest.approx(1 / 3)
    assert char_errors("the fox", "the box").errors == 1


def test_error_counts_add_up_to_corpus_rate() -> None:
    total = word_errors("one two three four", "one two three four") + word_errors("five six", "five seven")
    assert total.reference_length == 6 and total.errors == 1
    assert total.rate == pytest.approx(1 / 6)


def test_empty_reference_is_a_clear_error() -> None:
    with pytest.raises(TextError, match="no words"):
        wer("...", "hello")
