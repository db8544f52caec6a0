"""A worker's warning reaches the journal at warning priority: the worker's
line format, read from a real pipe by the supervisor's WorkerLog and written
through the supervisor's journald formatter (priority prefix)."""
from __future__ import annotations

import asyncio
import logging
import os

from supervisor import logs
from supervisor.workerlog import WorkerLog
from worker import logfmt


def test_worker_lines_reach_the_journal_with_their_own_priority(tmp_path):
    journal = open(tmp_path / "journal", "w+")
    st = os.fstat(journal.fileno())
    handler = logs.setup("info", stream=journal, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    r, w = os.pipe()
    worker_handler = None
    try:
        with os.fdopen(w, "w", buffering=1) as worker_stderr:
            worker_handler = logfmt.setup(worker_stderr)
            wlog = logging.getLogger("worker.test")
            wlog.warning("cache handoff stopped")
            wlog.error("boom\nsecond line")
            wlog.info("serving")

        async def relay():
            reader = WorkerLog(r, asyncio.get_running_loop(), "A")
            reader.close()                  # the worker has exited: log everything left
        asyncio.run(relay())
    finally:
        logging.getLogger().removeHandler(worker_handler)
        logging.getLogger("twindns").removeHandler(handler)
        os.close(r)
    journal.seek(0)
    lines = journal.read().splitlines()
    journal.close()
    assert lines[0].startswith("<4>twindns.worker.A: worker[") and lines[0].endswith("cache handoff stopped")
    assert lines[1].startswith("<3>") and "boom | second line" in lines[1]
    assert lines[2].startswith("<6>")


def test_an_orphan_logs_to_the_syslog_socket_or_keeps_stderr(tmp_path):
    import logging
    import os
    import socket
    import sys

    from worker import logfmt
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "log"))
    sock.settimeout(2)
    try:
        assert not logfmt.to_syslog(str(tmp_path / "missing"))
        assert logfmt.to_syslog(str(tmp_path / "log"))
        logging.getLogger("worker.test").warning("supervisor gone\nsecond line")
        line = sock.recv(4096).decode()
        assert line.endswith(f"twindns-worker[{os.getpid()}]: WARNING supervisor gone | second line\x00"), line
    finally:
        sock.close()
        logfmt.setup(sys.stderr)
