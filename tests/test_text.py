"""Text front end: normalization, sentence splitting and the byte-level BPE tokenizer."""

from __future__ import annotations

import json

import pytest

from llamavoice.errors import ConfigError, TextError, TokenizerError
from llamavoice.text import (
    NORMALIZER_VERSION,
    TOKENIZER_FORMAT_VERSION,
    TextTokenizer,
    check_speakable,
    normalize_text,
    split_sentences,
)

# ---------------------------------------------------------------------------------------------
# normalization
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("$3.50", "three dollars and fifty cents"),
        ("$1", "one dollar"),
        ("$0.25", "twenty-five cents"),
        ("£2.01", "two pounds and one penny"),
        ("€5", "five euros"),
        ("$1.5 million", "one point five million dollars"),
        ("1999", "nineteen ninety-nine"),
        ("in 1492", "in fourteen ninety-two"),
        ("1234", "one thousand two hundred thirty-four"),
        ("1,234,567", "one million two hundred thirty-four thousand five hundred sixty-seven"),
        ("Dr. Smith", "Doctor Smith"),
        ("Mr. and Mrs. Jones", "Mister and Missus Jones"),
        ("St. Louis", "Saint Louis"),
        ("Main St. today", "Main Street today"),
        ("No. 5", "number five"),
        ("cats vs. dogs", "cats versus dogs"),
        ("fruit, e.g. apples", "fruit, for example apples"),
        ("pens, paper, etc. Then more.", "pens, paper, et cetera. Then more."),
        ("42nd", "forty-second"),
        ("1st", "first"),
        ("3.14", "three point one four"),
        ("50%", "fifty percent"),
        ("March 5, 2024", "March fifth, twenty twenty-four"),
        ("2024-03-05", "March fifth, twenty twenty-four"),
        ("5/3/2024", "May third, twenty twenty-four"),  # US month/day/year
        ("3:30 pm", "three thirty p m"),
        ("the 1990s", "the nineteen nineties"),
        ("-5", "minus five"),
        ("Tom & Jerry", "Tom and Jerry"),
        ("\u201cHi,\u201d she said \u2014 it\u2019s late\u2026", '"Hi," she said, it\'s late...'),
        ("a\u00a0 \t b\n\nc", "a b c"),
        ("Really? Yes! Fine; ok: done.", "Really? Yes! Fine; ok: done."),
        ("caf\u00e9 na\u00efve", "caf\u00e9 na\u00efve"),
    ],
)
def test_normalize_text(raw: str, expected: str) -> None:
    assert normalize_text(raw) == expected


def test_normalize_has_no_digits_and_is_idempotent() -> None:
    raw = "On 2024-03-05 at 3:30 pm, Dr. Lee paid $12.99 (15% off) for 3 items, the 2nd try."
    once = normalize_text(raw)
    assert not any(c.isdigit() for c in once)
    assert normalize_text(once) == once


def test_normalizer_version_is_a_string() -> None:
    assert isinstance(NORMALIZER_VERSION, str) and NORMALIZER_VERSION


def test_emoji_only_text_is_unspeakable() -> None:
    assert normalize_text("\U0001f600\U0001f389") == ""
    with pytest.raises(TextError, match="no speakable words"):
        check_speakable("\U0001f600 \U0001f389 !!!")


@pytest.mark.parametrize("raw", ["", "   ", "\n\t"])
def test_empty_text_raises(raw: str) -> None:
    with pytest.raises(TextError, match="empty"):
        check_speakable(raw)


def test_too_long_text_raises() -> None:
    with pytest.raises(TextError, match="Split it"):
        check_speakable("word " * 30, max_chars=100)
    assert check_speakable("Hello, world!") == "Hello, world!"


# ---------------------------------------------------------------------------------------------
# sentence splitting
# ---------------------------------------------------------------------------------------------


def test_split_ascii_sentences() -> None:
    text = "Hello there. Dr. Smith is here! Is pi 3.14? Yes.\n\nNew paragraph"
    assert split_sentences(text) == ["Hello there.", "Dr. Smith is here!", "Is pi 3.14?", "Yes.",
                                     "New paragraph"]


def test_split_non_ascii_sentences() -> None:
    assert split_sentences("你好。世界！真的吗？是的") == ["你好。", "世界！", "真的吗？", "是的"]
    assert split_sentences("Ok\u3002 Fine\uff01") == ["Ok\u3002", "Fine\uff01"]


def test_split_long_sentence_at_clauses_then_spaces() -> None:
    clauses = ", ".join(f"clause number {i} goes here" for i in range(20)) + "."
    chunks = split_sentences(clauses, max_chars=60)
    assert len(chunks) > 1
    assert all(0 < len(c) <= 60 for c in chunks)
    assert all(c.endswith((",", ".")) for c in chunks)  # cut at clause marks, not mid-clause
    assert " ".join(chunks) == clauses

    words = " ".join(["lorem"] * 50)
    chunks = split_sentences(words, max_chars=23)
    assert all(0 < len(c) <= 23 for c in chunks)
    assert " ".join(chunks) == words

    cjk = "字" * 70  # no space, no clause mark: hard cuts, as few pieces as fit, of even length
    chunks = split_sentences(cjk, max_chars=30)
    assert [len(c) for c in chunks] == [23, 24, 23]


def test_split_long_sentence_into_even_pieces() -> None:
    """A sentence just over the limit is halved, not cut into a full piece and a scrap."""
    text = "I went to the race track once and bet on a horse that was so good that it took seven others to beat him!"
    chunks = split_sentences(text, max_chars=80)
    assert len(chunks) == 2 and " ".join(chunks) == text
    assert all(40 <= len(c) <= 60 for c in chunks)
    # A clause mark near the even cut wins over a space nearer to it.
    text = "The committee met on Tuesday morning, and it decided to postpone the vote until next week."
    assert split_sentences(text, max_chars=60) == ["The committee met on Tuesday morning,",
                                                   "and it decided to postpone the vote until next week."]


def test_split_never_returns_empty_chunks() -> None:
    chunks = split_sentences("  ... Hi.  !!!  \n\n\n  .  Ok?  ")
    assert chunks and all(c.strip() and any(ch.isalnum() for ch in c) for c in chunks)
    assert split_sentences("   ") == []


# ---------------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------------

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck?",
    "Peter Piper picked a peck of pickled peppers.",
    "It was the best of times, it was the worst of times.",
    "Call me Ishmael.",
    "All happy families are alike; each unhappy family is unhappy in its own way.",
    "In 1999 the price was $3.50 per pound.",
    "Dr. Smith arrived at 3:30 pm on March 5, 2024.",
    "The meeting is on the 42nd floor.",
    "Roughly 50% of the votes were counted.",
    "Pi is about 3.14, give or take.",
    "Tom & Jerry watched the game.",
    "I'd like a café au lait, please.",
    "That was a naïve question, wasn't it?",
    "Her résumé lists five languages.",
    "The weather today is sunny with light winds.",
    "Please turn off the lights when you leave.",
    "Would you like some tea or coffee?",
    "We walked along the river until sunset.",
    "He said, \u201cI\u2019ll be back soon.\u201d",
    "Numbers like 7, 13 and 21 appear often.",
    "The train leaves from platform No. 9.",
    "Mrs. Brown baked bread for the neighbours.",
    "Can you hear the birds singing outside?",
    "Reading books is a wonderful habit.",
    "The children played in the park all afternoon.",
    "A journey of a thousand miles begins with a single step.",
    "Music can change the mood of a room.",
    "Open the window, it is getting warm in here.",
    "They won the championship in 2010.",
    "My phone number changed last week.",
    "Where did you put the keys?",
    "The museum opens at nine and closes at five.",
    "Fresh bread smells better than anything.",
    "Mountains rise above the quiet valley.",
    "The ocean was calm and blue that morning.",
    "Could you speak a little more slowly, please?",
    "This recipe needs two eggs and a cup of flour.",
    "Thank you very much for your help!",
    "Science explains many things, but not everything.",
    "The library is closed on public holidays.",
    "He ran the marathon in under four hours.",
    "Every evening we listen to the radio.",
    "Her garden is full of roses and tulips.",
    "The old clock on the wall stopped at midnight.",
    "Let's meet again next Tuesday.",
    "A small dog barked at the mail carrier.",
    "The results surprised everyone in the lab.",
    "Good night, and sleep well.",
]


@pytest.fixture(scope="module")
def tokenizer() -> TextTokenizer:
    return TextTokenizer.train(_CORPUS, vocab_size=400)


def test_train_vocab_size(tokenizer: TextTokenizer) -> None:
    assert 256 < tokenizer.vocab_size <= 400


def test_train_rejects_too_small_vocab() -> None:
    with pytest.raises(ConfigError, match="vocab_size"):
        TextTokenizer.train(_CORPUS, vocab_size=100)


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "Dr. Smith paid $3.50 on March 5, 2024.",
        "A caf\u00e9 for the na\u00efve, s\u00fc\u00df und gr\u00fcn.",
        "We read \u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8 in class.",  # never seen in training: bytes cover it
        "  spaces   and\ttabs  ",
    ],
)
def test_encode_decode_round_trip(tokenizer: TextTokenizer, text: str) -> None:
    ids = tokenizer.encode(text)
    assert ids and all(0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == normalize_text(text)


def test_text_in_a_script_the_model_cannot_speak_is_refused(tokenizer: TextTokenizer) -> None:
    # Mostly Japanese: an English-only model would babble it (issue #14). Both front ends share this check.
    with pytest.raises(TextError, match="script.*(CJK|Hiragana|Katakana)"):
        tokenizer.encode("\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3002")


def test_bpe_merges_shrink_common_text(tokenizer: TextTokenizer) -> None:
    text = "the quick brown fox jumps over the lazy dog"
    assert len(tokenizer.encode(text)) < 0.75 * len(text.encode("utf-8"))  # merges were learned


def test_encode_empty_raises(tokenizer: TextTokenizer) -> None:
    with pytest.raises(TextError):
        tokenizer.encode("   ")
    with pytest.raises(TextError):
        tokenizer.encode("\U0001f600")


def test_decode_out_of_range_raises(tokenizer: TextTokenizer) -> None:
    with pytest.raises(TokenizerError, match="outside"):
        tokenizer.decode([tokenizer.vocab_size + 5])


def test_save_load_same_ids(tokenizer: TextTokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "tokenizer_meta.json").read_text())
    assert meta["format_version"] == TOKENIZER_FORMAT_VERSION
    assert meta["normalizer_version"] == NORMALIZER_VERSION
    assert meta["vocab_size"] == tokenizer.vocab_size
    loaded = TextTokenizer.load(tmp_path / "tok")
    assert loaded.vocab_size == tokenizer.vocab_size
    for text in _CORPUS[:10] + ["caf\u00e9 na\u00efve"]:
        assert loaded.encode(text) == tokenizer.encode(text)


def test_load_tampered_file_raises(tokenizer: TextTokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path)
    path = tmp_path / "tokenizer.json"
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    a, b = list(vocab)[300:302]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # still valid JSON, different ids
    path.write_text(json.dumps(data))
    with pytest.raises(TokenizerError, match="checksum"):
        TextTokenizer.load(tmp_path)


def test_load_corrupt_meta_raises(tokenizer: TextTokenizer, tmp_path) -> None:
    tokenizer.save(tmp_path)
    (tmp_path / "tokenizer_meta.json").write_text("{not json")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        TextTokenizer.load(tmp_path)


@pytest.mark.parametrize("key", ["format_version", "normalizer_version"])
def test_load_version_mismatch_raises(tokenizer: TextTokenizer, tmp_path, key: str) -> None:
    tokenizer.save(tmp_path)
    meta_path = tmp_path / "tokenizer_meta.json"
    meta = json.loads(meta_path.read_text())
    current = meta[key]
    meta[key] = "999"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(TokenizerError) as info:
        TextTokenizer.load(tmp_path)
    message = str(info.value)
    assert key in message and "'999'" in message and repr(current) in message
    assert "retrain" in message


def test_load_missing_raises(tokenizer: TextTokenizer, tmp_path) -> None:
    with pytest.raises(TokenizerError, match="does not exist"):
        TextTokenizer.load(tmp_path / "nope")
    tokenizer.save(tmp_path)
    (tmp_path / "tokenizer.json").unlink()
    with pytest.raises(TokenizerError, match="missing"):
        TextTokenizer.load(tmp_path)
