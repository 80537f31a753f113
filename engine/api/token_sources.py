"""Where ``osupgrade serve`` gets its bearer tokens: flags, files, the environment.

One syntax everywhere, ``TOKEN`` or ``TOKEN:SUB1,SUB2``. A token file holds one per line
(blank lines and ``#`` comments ignored); ``OSUPGRADE_AUTH_TOKEN`` holds one or more,
separated by white space. Tokens given on the command line (``--auth-token``,
``--auth-token-file``) replace those of the environment (``OSUPGRADE_AUTH_TOKEN``,
``OSUPGRADE_AUTH_TOKEN_FILE``); with none at all, the server generates one.
Error messages name the source and line, never the text: a malformed line may be a
secret.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Mapping
from pathlib import Path

from engine.api.auth import Token, parse_token
from engine.env import env_value


class TokenSourceError(ValueError):
    """A token source that cannot be read or holds a malformed token."""


def gather_tokens(
    flags: Iterable[str], files: Iterable[Path], environ: Mapping[str, str] | None = None
) -> tuple[tuple[Token, ...], list[str]]:
    """(tokens, warnings): the command line's tokens, else the environment's."""
    warnings: list[str] = []
    tokens = [parse_token(text) for text in flags]
    for path in files:
        tokens += read_token_file(path, warnings)
    if tokens:
        return tuple(tokens), warnings
    if (text := env_value("--auth-token", environ)) is not None:
        tokens += _parse_lines(text.split(), "OSUPGRADE_AUTH_TOKEN", "token")
    if (path_text := env_value("--auth-token-file", environ)) is not None:
        tokens += read_token_file(Path(path_text), warnings)
    return tuple(tokens), warnings


def read_token_file(path: Path, warnings: list[str]) -> list[Token]:
    """The tokens of a file, one per line; a file others may read adds a warning."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = path.stat().st_mode
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise TokenSourceError(f"cannot read token file {path}: {reason}") from None
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.append(f"token file {path} is readable by other users (chmod 600 it)")
    lines = [line.strip() for line in text.splitlines()]
    numbered = [(n, line) for n, line in enumerate(lines, 1) if line and not line.startswith("#")]
    tokens = []
    for number, line in numbered:
        tokens += _parse_lines([line], f"{path}", f"line {number}")
    if not tokens:
        raise TokenSourceError(f"token file {path} holds no token")
    return tokens


def _parse_lines(items: list[str], source: str, what: str) -> list[Token]:
    tokens = []
    for i, item in enumerate(items, 1):
        try:
            tokens.append(parse_token(item))
        except ValueError:
            where = what if what.startswith("line") else f"{what} {i}"
            raise TokenSourceError(
                f"{source}, {where}: not TOKEN or TOKEN:SUB1,SUB2 (one token, no spaces)"
            ) from None
    return tokens
