"""``osupgrade audit fences``: did any scale set ever have two drivers? Ask the log.

Reads the whole log (SQLite file or PostgreSQL DSN) page by page and runs
``engine.scaleout.fence_audit`` over it. Exit 0 when the log proves single ownership, 1 with the
first problems when it does not, 2 when the log cannot be read.
"""

from __future__ import annotations

import asyncio

from engine.cli.log_source import EXIT_UNREADABLE, describe, open_log
from engine.scaleout.fence_audit import FenceAuditor
from events import EventStoreError

PAGE = 5000


def run_audit_fences(db: str, pg_schema: str) -> int:
    """Open the log ``db`` names, audit it, print the verdict; return the exit status."""
    try:
        return asyncio.run(_audit(db, pg_schema))
    except EventStoreError as exc:
        print(f"error: {exc}", flush=True)
        return EXIT_UNREADABLE


async def _audit(db: str, pg_schema: str) -> int:
    auditor = FenceAuditor()
    async with open_log(db, pg_schema) as store:
        after = 0
        while page := await store.read_all(after=after, limit=PAGE):
            auditor.feed(page)
            after = page[-1].position
    audit = auditor.result()
    where = describe(db, pg_schema)
    if audit.ok:
        print(
            f"ok: {audit.events:,} events of {where}; {audit.scale_sets:,} scale sets, "
            f"{audit.owners:,} ownerships ({audit.takeovers:,} takeovers): no scale set was "
            "driven by two engines at once, no instance reimaged twice by one upgrade"
        )
        return 0
    print(f"FAILED: {len(audit.problems):,} problems in {where}, the first:")
    for problem in audit.problems[:10]:
        print(f"  {problem}")
    return 1
