"""A worker's log pipe re-logged by the supervisor (supervisor/workerlog.py)."""
from __future__ import annotations

import asyncio
import logging
import os

from supervisor.workerlog import MAX_LINE, WorkerLog


def test_lines_keep_their_level_are_cut_and_lose_control_characters(caplog):
    async def scenario():
        r, w = os.pipe()
        log = WorkerLog(r, asyncio.get_running_loop(), "A")
        os.write(w, b"worker[7] WARNING upstream slow\nTraceback (most recent call last):\n"
                    b"worker[7] INFO ok \x1b[31mred\n" + b"x" * (MAX_LINE + 10) + b"\npartial")
        await asyncio.sleep(0.05)
        os.close(w)
        await asyncio.sleep(0.05)
        log.close()
        os.close(r)
    with caplog.at_level(logging.DEBUG, logger="twindns.worker.A"):
        asyncio.run(scenario())
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "twindns.worker.A"]
    assert got[0] == (logging.WARNING, "worker[7] WARNING upstream slow")
    assert got[1] == (logging.WARNING, "Traceback (most recent call last):"), "a traceback keeps the level before it"
    assert got[2] == (logging.INFO, "worker[7] INFO ok ?[31mred")
    assert got[3][1] == "x" * MAX_LINE + " [line cut]"
    assert got[4][1] == "partial", "what is left when the worker exits is logged too"
