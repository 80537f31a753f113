"""Child process for the durability test: appends forever, reporting each acknowledgement.

Usage: python -m tests.durability_child PATH DURABILITY START_BATCH
Each acknowledged append prints ``ACK batch first_position last_position`` (flushed) only
after ``append`` returned, i.e. after its COMMIT.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from engine.logging import configure_logging
from events import NewEvent, SQLiteEventStore

WRITERS = 20
BATCH = 5


async def main(path: str, durability: str, start: int) -> None:
    async with SQLiteEventStore(path, durability=durability) as store:  # type: ignore[arg-type]

        async def writer(lane: int) -> None:
            batch_no = start + lane
            while True:
                events = [
                    NewEvent("test.durable", {"batch": batch_no, "index": i, "pad": "x" * 300})
                    for i in range(BATCH)
                ]
                positions = await store.append(f"lane-{lane}", events, None)
                print(f"ACK {batch_no} {positions[0]} {positions[-1]}", flush=True)
                batch_no += WRITERS

        await asyncio.gather(*(writer(lane) for lane in range(WRITERS)))


if __name__ == "__main__":
    configure_logging("json", logging.WARNING)  # logs go to stderr; stdout carries ACKs
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
