"""JSON with positions: every value's line and column, addressed by its JSON pointer.

``json`` tells where a *syntax* error is, but once a file parses, the positions are
gone. A scenario file that is valid JSON but says ``"capacity": 0`` deserves an error
that names line and column too, so this module walks the text once more (with the
standard library's own scanners for strings and scalars) and records where each value
starts.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.decoder import scanstring  # type: ignore[attr-defined]
from typing import Any

_WS = re.compile(r"[ \t\n\r]*")
_SCALARS = json.JSONDecoder()


@dataclass(frozen=True)
class Located:
    """A parsed document and where each of its values starts in the text."""

    value: Any
    offsets: dict[str, int]  # JSON pointer -> offset of the value's first character
    text: str

    def line_col(self, pointer: str) -> tuple[int, int]:
        """1-based line and column of the value at ``pointer`` (or its nearest parent)."""
        while pointer not in self.offsets and pointer:
            pointer = pointer.rsplit("/", 1)[0]
        offset = self.offsets.get(pointer, 0)
        line = self.text.count("\n", 0, offset) + 1
        return line, offset - (self.text.rfind("\n", 0, offset) + 1) + 1


def escape(token: str) -> str:
    """Escape one reference token of a JSON pointer (RFC 6901)."""
    return token.replace("~", "~0").replace("/", "~1")


def loads_located(text: str) -> Located:
    """Parse ``text`` (raising ``json.JSONDecodeError`` with line and column on bad syntax)."""
    value = json.loads(text)  # the standard parser's errors carry lineno/colno
    offsets: dict[str, int] = {}
    end = _walk(text, _skip(text, 0), "", offsets)
    _skip(text, end)
    return Located(value, offsets, text)


def _skip(text: str, index: int) -> int:
    match = _WS.match(text, index)
    return match.end() if match else index


def _walk(text: str, index: int, pointer: str, offsets: dict[str, int]) -> int:
    """Record the offset of the value at ``index`` and its children; return its end."""
    offsets[pointer] = index
    char = text[index]
    if char == "{":
        return _walk_object(text, index + 1, pointer, offsets)
    if char == "[":
        return _walk_array(text, index + 1, pointer, offsets)
    _, end = _SCALARS.raw_decode(text, index)
    return int(end)


def _walk_object(text: str, index: int, pointer: str, offsets: dict[str, int]) -> int:
    index = _skip(text, index)
    if text[index] == "}":
        return index + 1
    while True:
        key, index = scanstring(text, index + 1)  # index is at the opening quote
        index = _skip(text, _skip(text, index) + 1)  # past ':'
        index = _skip(text, _walk(text, index, f"{pointer}/{escape(key)}", offsets))
        if text[index] == "}":
            return index + 1
        index = _skip(text, index + 1)  # past ','


def _walk_array(text: str, index: int, pointer: str, offsets: dict[str, int]) -> int:
    index = _skip(text, index)
    if text[index] == "]":
        return index + 1
    position = 0
    while True:
        index = _skip(text, _walk(text, index, f"{pointer}/{position}", offsets))
        position += 1
        if text[index] == "]":
            return index + 1
        index = _skip(text, index + 1)
