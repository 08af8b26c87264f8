"""Text normalization for scoring ASR transcripts (WER/CER).

Reference and hypothesis go through the *same* function, so differences that are only spelling
conventions do not count as errors: case, punctuation, digits versus words ("42" / "forty-two"),
symbols ("%" / "percent"), abbreviations ("Dr." / "Doctor"), hyphens and apostrophes, and curly
quotes. Numbers and abbreviations are expanded by the TTS front end's own
:func:`llamavoice.text.normalize.normalize_text`, so the words the model was asked to say and the
words the ASR writes are spelled by one set of rules.

Closed compounds ("seashells" / "sea shells", "email" / "e-mail") cannot be decided from one
string alone; :func:`unify_compounds` resolves them for a reference/hypothesis pair by joining
adjacent words of one side when the joined word is what the other side wrote.
"""

from __future__ import annotations

import re
import unicodedata

from llamavoice.text.normalize import normalize_text

# Hesitations Whisper sometimes writes for breaths or hums; never in our reference texts.
_FILLERS = {"uh", "um", "umm", "uhm", "hmm", "mm", "mhm", "er", "ah"}

# One spelling for words with several accepted ones (both sides get the same choice).
_SPELLINGS = {
    "ok": "okay",
    "alright": "all right",
    "mr": "mister",
    "mrs": "missus",
    "dr": "doctor",
    "vs": "versus",
    "per cent": "percent",
}

_APOSTROPHES = "'\u2018\u2019\u02bc\u0060\u00b4"
_HYPHENS = "-\u2010\u2011\u2012\u2013\u2014\u2212"


def normalize_for_asr(text: str) -> str:
    """Lower-case words separated by single spaces, ready for WER/CER.

    Steps: expand numbers/symbols/abbreviations with the TTS normalizer, lower-case, drop
    apostrophes ("don't" → "dont", "dog's" → "dogs"), turn hyphens and other punctuation into
    spaces, join spelled-out "a m"/"p m" into "am"/"pm", unify a few alternative spellings and
    drop hesitation fillers.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFKC", text)
    # Apostrophes inside words go first: normalize_text would otherwise keep them as quotes.
    text = re.sub(rf"(?<=\w)[{_APOSTROPHES}](?=\w)", "", text)
    text = normalize_text(text) if text.strip() else ""
    text = text.lower()
    text = re.sub(rf"[{_APOSTROPHES}]", " ", text)
    text = re.sub(rf"[{_HYPHENS}]", " ", text)
    # Any remaining punctuation or symbol separates words.
    text = "".join(" " if unicodedata.category(c)[0] in "PSZC" else c for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    text = re.sub(r"\b([ap]) m\b", r"\1m", text)
    for variant, canonical in _SPELLINGS.items():
        text = re.sub(rf"\b{variant}\b", canonical, text)
    return " ".join(w for w in text.split() if w not in _FILLERS)


def _join_toward(words: list[str], targets: set[str], keep: set[tuple[str, str]]) -> list[str]:
    """Join runs of 2-3 adjacent ``words`` whose concatenation is in ``targets``.

    ``keep`` holds word pairs that the other side also has as separate words: those are left
    alone, so a correct "sea shore" is never merged just because "seashore" appears elsewhere.
    """
    out: list[str] = []
    i = 0
    while i < len(words):
        for n in (3, 2):
            run = words[i : i + n]
            pairs = zip(run, run[1:], strict=False)
            if len(run) == n and "".join(run) in targets and not any(pair in keep for pair in pairs):
                out.append("".join(run))
                i += n
                break
        else:
            out.append(words[i])
            i += 1
    return out


def unify_compounds(reference: str, hypothesis: str) -> tuple[str, str]:
    """Write closed/open compounds the same way on both sides of a pair.

    If the hypothesis has "sea shells" where the reference has "seashells" (or the other way
    round), the split side is joined. Inputs should already be :func:`normalize_for_asr` output.
    """
    ref, hyp = reference.split(), hypothesis.split()
    ref_pairs, hyp_pairs = set(zip(ref, ref[1:], strict=False)), set(zip(hyp, hyp[1:], strict=False))
    hyp = _join_toward(hyp, set(ref), ref_pairs)
    ref = _join_toward(ref, set(hyp), hyp_pairs)
    return " ".join(ref), " ".join(hyp)
