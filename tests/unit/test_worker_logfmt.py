"""A worker's log lines carry their syslog priority when stderr is the journal stream."""
from __future__ import annotations

import logging
import os

from worker import logfmt


def _journal_env(f) -> dict[str, str]:
    st = os.fstat(f.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_warnings_reach_the_journal_at_warning_priority(tmp_path):
    with open(tmp_path / "stderr", "w+") as f:
        handler = logfmt.setup(f, _journal_env(f))
        try:
            log = logging.getLogger("worker.test")
            log.warning("cache handoff stopped")
            log.error("boom\nsecond line")
            log.info("serving")
        finally:
            logging.getLogger().removeHandler(handler)
        f.seek(0)
        lines = f.read().splitlines()
    assert lines[0].startswith("<4>worker[") and lines[0].endswith("WARNING cache handoff stopped")
    assert lines[1].startswith("<3>") and "boom | second line" in lines[1]
    assert lines[2].startswith("<6>")


def test_no_prefix_when_stderr_is_not_the_journal(tmp_path):
    with open(tmp_path / "a", "w+") as f, open(tmp_path / "b", "w") as other:
        handler = logfmt.setup(f, _journal_env(other))      # JOURNAL_STREAM names another file
        try:
            logging.getLogger("worker.test").warning("plain")
        finally:
            logging.getLogger().removeHandler(handler)
        f.seek(0)
        assert f.read().startswith("worker[")
