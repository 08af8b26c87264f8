"""A small SSML subset: ``<speak>``, ``<break>``, ``<p>``, ``<s>`` and ``<prosody rate>``.

Users mostly want pauses, so the subset is what maps onto how the API already speaks a text, chunk
by chunk: a ``<break>`` becomes silence between two chunks, ``<p>``/``<s>`` end a chunk,
``<prosody rate>`` sets the speed of the chunks inside it. Anything else in the markup is not read
aloud: other SSML elements (``<emphasis>``, ``<say-as>``, ...) speak their text and are named in a
warning. Markup is parsed with ``defusedxml`` (no entity expansion bombs, no external entities).

Plain text is never parsed: only text that starts with ``<speak`` or holds an SSML tag or a closing
tag (``</...>``) is treated as markup, so 'a < b' stays a comparison.
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

from llamavoice.errors import TextError

MAX_BREAK_SECONDS = 10.0  # one <break>
MAX_TOTAL_BREAK_SECONDS = 300.0  # all breaks of one text (the silence is held in memory)
RATE_RANGE = (0.25, 4.0)  # the same range as the speed option

_STRENGTHS = {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.5, "strong": 0.75, "x-strong": 1.2}
_RATES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "default": 1.0, "fast": 1.5, "x-fast": 2.0}
_SSML_TAGS = ("speak|break|prosody|p|s|emphasis|say-as|sub|phoneme|voice|audio|mark|lang|w|amazon:[\\w-]+|"
              "mstts:[\\w-]+")
_LOOKS_LIKE_MARKUP = re.compile(rf"^\s*<speak\b|<\s*/?\s*(?:{_SSML_TAGS})(?:\s[^<>]*)?/?>|</[A-Za-z][\w.:-]*\s*>")


@dataclass
class Segment:
    """A stretch of text spoken at one rate, with silence before/after it (seconds)."""

    text: str
    rate: float = 1.0
    pause_before: float = 0.0
    pause_after: float = 0.0


def looks_like_ssml(text: str) -> bool:
    return isinstance(text, str) and bool(_LOOKS_LIKE_MARKUP.search(text))


def parse(text: str) -> list[Segment]:
    """Plain text -> one segment; SSML -> its segments. TextError names malformed markup."""
    if not looks_like_ssml(text):
        return [Segment(text)]
    import defusedxml.ElementTree as ET
    from defusedxml import DefusedXmlException

    source = text.strip()
    if not re.match(r"(?:<\?xml[^>]*>\s*)?(?:<!DOCTYPE|<speak\b)", source):
        source = f"<speak>{source}</speak>"  # bare tags in plain text: 'Hi <break time="1s"/> there'
    try:
        root = ET.fromstring(source)
    except ET.ParseError as exc:
        raise TextError(f"the text looks like SSML markup but is not well-formed XML ({exc}); fix the markup, "
                        "or escape '<' as '&lt;' to have it read as text") from None
    except DefusedXmlException as exc:
        raise TextError(f"SSML markup refused: {exc} (DTDs and entity declarations are not allowed)") from None
    if _local(root.tag) != "speak":
        raise TextError(f"SSML must have <speak> as its outer element, not <{_local(root.tag)}>")
    builder = _Builder()
    builder.walk(root, 1.0)
    builder.flush()
    if builder.ignored:
        warnings.warn(f"SSML element(s) {', '.join(sorted(builder.ignored))} are not supported (supported: "
                      "speak, break, p, s, prosody rate); their text is spoken plainly", stacklevel=3)
    return builder.segments


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]  # '{http://www.w3.org/2001/10/synthesis}speak' -> 'speak'


def _seconds(value: str) -> float:
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)\s*", value or "")
    if not m:
        raise TextError(f"SSML <break time={value!r}>: give the time as e.g. '500ms' or '2s'")
    seconds = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    if seconds > MAX_BREAK_SECONDS:
        raise TextError(f"SSML <break time={value!r}> is longer than the {MAX_BREAK_SECONDS:g} s limit of one break; "
                        "use several breaks or a shorter one")
    return seconds


def _rate(value: str) -> float:
    value = (value or "").strip().lower()
    if value in _RATES:
        return _RATES[value]
    m = re.fullmatch(r"([+-]?)(\d+(?:\.\d*)?|\.\d+)(%?)", value)
    if not m:
        raise TextError(f"SSML <prosody rate={value!r}>: use x-slow, slow, medium, fast, x-fast, a percentage "
                        "('80%', '+20%') or a factor ('1.2')")
    number = float(m.group(2))
    if m.group(3):
        rate = 1 + (number if m.group(1) == "+" else -number) / 100 if m.group(1) else number / 100
    else:
        rate = number
    if not (math.isfinite(rate) and RATE_RANGE[0] <= rate <= RATE_RANGE[1]):
        raise TextError(f"SSML <prosody rate={value!r}> gives a rate of {rate:g}; use a rate between "
                        f"{RATE_RANGE[0]:g} and {RATE_RANGE[1]:g}")
    return rate


class _Builder:
    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.parts: list[str] = []
        self.rate = 1.0
        self.pending_pause = 0.0  # a break before any text: silence at the start
        self.total_pause = 0.0
        self.ignored: set[str] = set()

    def text(self, value: str | None, rate: float) -> None:
        if value and value.strip():
            if rate != self.rate:
                self.flush()
                self.rate = rate
            self.parts.append(value)

    def flush(self) -> None:
        text = re.sub(r"\s+", " ", " ".join(self.parts)).strip()
        self.parts = []
        if text:
            self.segments.append(Segment(text, self.rate, pause_before=self.pending_pause))
            self.pending_pause = 0.0

    def pause(self, seconds: float) -> None:
        self.total_pause += seconds
        if self.total_pause > MAX_TOTAL_BREAK_SECONDS:
            raise TextError(f"the SSML breaks add up to more than {MAX_TOTAL_BREAK_SECONDS:g} s of silence; "
                            "split the text into several calls")
        self.flush()
        if self.segments:
            self.segments[-1].pause_after += seconds
        else:
            self.pending_pause += seconds

    def walk(self, node, parent_rate: float) -> None:  # noqa: ANN001 (an ElementTree element)
        """Speak ``node`` and its children; its tail (the text after it) belongs to the parent."""
        tag = _local(node.tag)
        rate = parent_rate
        if tag == "break":
            strength = node.get("strength")
            if node.get("time") is not None:
                self.pause(_seconds(node.get("time")))
            elif strength is not None:
                if strength not in _STRENGTHS:
                    raise TextError(f"SSML <break strength={strength!r}>: use one of {', '.join(_STRENGTHS)}")
                self.pause(_STRENGTHS[strength])
            else:
                self.pause(_STRENGTHS["medium"])
        else:
            if tag == "prosody":
                unsupported = sorted(set(node.attrib) - {"rate"})
                if unsupported:
                    self.ignored.add(f"<prosody {' '.join(unsupported)}>")
                if node.get("rate") is not None:
                    rate = parent_rate * _rate(node.get("rate"))
            elif tag not in ("speak", "p", "s"):
                self.ignored.add(f"<{tag}>")
            if tag in ("p", "s"):
                self.flush()  # a paragraph or sentence starts a new chunk
            self.text(node.text, rate)
            for child in node:
                self.walk(child, rate)
            if tag in ("p", "s"):
                self.flush()
        self.text(node.tail, parent_rate)
