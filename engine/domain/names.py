"""ARM's character rules and case-insensitivity for resource names, in Python.

ARM compares names ordinal-ignore-case: each UTF-16 unit is upper-cased on its own by
the invariant culture's *simple* mapping, then compared. Python's ``lower``/``casefold``
are *full* mappings and fold more (the Kelvin sign to ``k``, ``ß`` to ``ss``), which
would merge resources that ARM keeps apart; so the fold here is per character.
"""

from __future__ import annotations

import unicodedata

LETTER_OR_DIGIT = frozenset({"Lu", "Ll", "Lt", "Lm", "Lo", "Nd"})
"""The Unicode categories for which .NET's ``Char.IsLetterOrDigit`` is true."""


def is_letter_or_digit(char: str) -> bool:
    """.NET's ``Char.IsLetterOrDigit`` for one BMP character (a UTF-16 unit)."""
    return ord(char) <= 0xFFFF and unicodedata.category(char) in LETTER_OR_DIGIT


def simple_upper(char: str) -> str:
    """The simple (one-to-one) upper-case mapping of ``char``, as .NET's ToUpperInvariant.

    Python exposes only full mappings; where the full upper case is several characters
    (``ß`` -> ``SS``), the simple mapping is the title case when that is one character
    (``ᾳ`` -> ``ᾼ``) and otherwise none (the character itself).
    """
    upper = char.upper()
    if len(upper) == 1:
        return upper
    title = char.title()
    return title if len(title) == 1 else char


def fold(segment: str) -> str:
    """The case-insensitive identity of one name segment.

    ASCII is lower-cased (the keys of every existing log); any other character becomes
    its simple upper case, except where that is ASCII (dotless i U+0131 -> ``I``,
    long s U+017F -> ``S``): .NET's ordinal casing keeps those apart from ``I`` and ``S``.
    """
    if segment.isascii():
        return segment.lower()
    return "".join(_fold_char(c) for c in segment)


def _fold_char(char: str) -> str:
    if char.isascii():
        return char.lower()
    upper = simple_upper(char)
    return char if upper.isascii() else upper
