"""Fixtures of the HTTP API tests: one live server per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api.live import LiveServer, live_server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """A live server on a virtual clock, with Ubuntu 18.04 version 1.0.0 published."""
    with live_server(tmp_path) as live:
        live.publish("1.0.0")
        yield live
