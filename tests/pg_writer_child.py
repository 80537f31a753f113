"""Child process for the multi-process PostgreSQL test: one "engine" appending.

Usage: python -m tests.pg_writer_child DSN SCHEMA NAME APPENDS
Opens the store, prints ``READY`` and waits for a line on stdin (so the test can start
all children at once), then appends ``APPENDS`` batches of ``BATCH`` events from
``WRITERS`` concurrent tasks to the streams ``NAME-0`` .. ``NAME-{WRITERS - 1}``, and
prints ``DONE`` (after every COMMIT).
"""

from __future__ import annotations

import asyncio
import logging
import sys

from engine.logging import configure_logging
from events import NewEvent, PostgresEventStore

WRITERS = 10
BATCH = 5


async def wait_for_go() -> None:
    """Read one line from stdin without blocking the event loop."""
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()


async def main(dsn: str, schema: str, name: str, appends: int) -> None:
    async with PostgresEventStore(dsn, schema=schema) as store:
        print("READY", flush=True)
        await wait_for_go()

        async def writer(lane: int) -> None:
            for n in range(lane, appends, WRITERS):
                events = [
                    NewEvent("test.written", {"by": name, "n": n, "i": i}) for i in range(BATCH)
                ]
                await store.append(f"{name}-{lane}", events, None)

        await asyncio.gather(*(writer(lane) for lane in range(WRITERS)))
    print("DONE", flush=True)


if __name__ == "__main__":
    configure_logging("json", logging.WARNING)
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
