"""Which characters of a peer's text are controls rather than text.

One definition serves the notice rules (a one-line field may hold none of
them) and the CLI (which escapes them before printing): every character of
Unicode category Cc (C0, DEL, C1), the line and paragraph separators
(categories Zl and Zp: U+2028, U+2029), and the bidi embedding, override,
isolate and mark characters (U+061C, U+200E, U+200F, U+202A-U+202E,
U+2066-U+2069). The joiners U+200C and U+200D are text: Persian, Arabic and
Indic names need them.
"""

from __future__ import annotations

import re

# Everything but the C0 range, which multi-line text allows in part.
_ALWAYS = r"\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
_ONE_LINE = re.compile(rf"[\x00-\x1f{_ALWAYS}]")
# Multi-line text may hold tab, line feed, and carriage return before a line feed.
_MULTI_LINE = re.compile(rf"[\x00-\x08\x0b\x0c\x0e-\x1f{_ALWAYS}]|\r(?!\n)")


def control_characters(*, multiline: bool = False) -> re.Pattern[str]:
    """The pattern matching each control character of the class, one at a time.

    With ``multiline``, tab, line feed and a carriage return followed by a
    line feed are not matched.
    """
    return _MULTI_LINE if multiline else _ONE_LINE


def first_control_character(text: str, *, multiline: bool = False) -> str | None:
    """The first control character in ``text``, or ``None`` if it holds none."""
    found = control_characters(multiline=multiline).search(text)
    return found[0] if found else None


def code_point(char: str) -> str:
    """``U+001B``: how problems name a character without showing it."""
    return f"U+{ord(char):04X}"
