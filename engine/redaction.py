"""Secrets never reach a log line: known values, DSN passwords and bearer tokens scrubbed.

The process registers every secret it is given (auth tokens, the database DSN's
password, a cluster secret) with ``register_secret``; ``scrub`` replaces them, any
``scheme://user:password@`` password and any ``Bearer <token>`` in a string. The
structlog processor ``redact`` applies it to every value of every event, after the
traceback has been turned into text or data, so messages and tracebacks are covered.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import MutableMapping
from typing import Any
from urllib.parse import unquote, urlsplit

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values would mask ordinary words; tokens are longer

_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s]*:)[^@\s/]+(?=@)")
_BEARER = re.compile(r"(?P<head>\bBearer\s+)[A-Za-z0-9\-._~+/]+=*", re.IGNORECASE)

_lock = threading.Lock()
_secrets: tuple[str, ...] = ()  # longest first, so a secret containing another goes whole


def register_secret(value: str | None) -> None:
    """Scrub ``value`` from every log line from now on (too short a value is ignored)."""
    global _secrets  # noqa: PLW0603 - one registry per process, read lock-free
    if value is None or len(value) < MIN_SECRET_LENGTH:
        return
    with _lock:
        if value not in _secrets:
            _secrets = tuple(sorted({*_secrets, value}, key=len, reverse=True))


def register_url_password(url: str | None) -> None:
    """Register the password of ``scheme://user:password@host/...`` (percent-decoded too)."""
    if not url or "://" not in url:
        return
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password:
            register_secret(parts.password)
            register_secret(unquote(parts.password))


def forget_secrets() -> None:
    """Drop every registered secret (tests)."""
    global _secrets  # noqa: PLW0603
    with _lock:
        _secrets = ()


def scrub(text: str) -> str:
    """``text`` without registered secrets, URL passwords or bearer tokens."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    if "://" in text:
        text = _URL_PASSWORD.sub(rf"\g<head>{MASK}", text)
    if "earer" in text or "EARER" in text:
        text = _BEARER.sub(rf"\g<head>{MASK}", text)
    return text


def scrub_value(value: Any, depth: int = 0) -> Any:
    """``value`` with every string in it scrubbed (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return scrub(value)
    if depth > 32:
        return value
    if isinstance(value, dict):
        return {k: scrub_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v, depth + 1) for v in value)
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(repr(value))  # what the renderers would show, scrubbed


def redact(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> dict[str, Any]:
    """structlog processor: scrub every value (place it after exception formatting)."""
    return {key: scrub_value(value) for key, value in event_dict.items()}
