"""Shared fixtures: every contract test runs once per EventStore backend."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.backends import BACKENDS, Backend, opened


@pytest.fixture(params=BACKENDS, ids=[b.name for b in BACKENDS])
def backend(request: pytest.FixtureRequest) -> Backend:
    """One EventStore backend (the test runs once for each)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
async def store(backend: Backend, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh, open store of the current backend."""
    async with opened(backend, tmp_path) as s:
        yield s
