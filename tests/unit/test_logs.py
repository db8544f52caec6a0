"""Event lines: one per event, timestamped unless journald stamps them."""
from __future__ import annotations

import io
import logging
import os
import re

import pytest

from supervisor import logs


def test_event_line_is_one_parseable_line(tmp_path):
    stream = io.StringIO()
    logs.setup("info", stream=stream, environ={})
    log = logging.getLogger("twindns.test")
    logs.event(log, "worker_state", slot="A", generation=3, reason="probe timed out\nthree times")
    logs.event(log, "per_query_noise", level=logging.DEBUG, qname="x")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO twindns\.test: "
                    r'worker_state slot=A generation=3 reason="probe timed out\\nthree times"$', lines[0])


def test_journald_gets_priority_prefix_and_no_timestamp(tmp_path):
    f = open(tmp_path / "journal", "w+")
    st = os.fstat(f.fileno())
    logs.setup("warning", stream=f, environ={"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    log = logging.getLogger("twindns.test")
    log.info("hidden")
    log.warning("repair done")
    f.flush()
    assert open(tmp_path / "journal").read() == "<4>twindns.test: repair done\n"


def test_inherited_journal_stream_for_another_file_is_ignored(tmp_path):
    stream = io.StringIO()
    logs.setup("info", stream=stream, environ={"JOURNAL_STREAM": "1:2"})
    logging.getLogger("twindns.test").info("x")
    assert re.match(r"^\d{4}-", stream.getvalue())


def test_setup_twice_keeps_one_handler():
    stream = io.StringIO()
    logs.setup("info", stream=io.StringIO(), environ={})
    logs.setup("info", stream=stream, environ={})
    logging.getLogger("twindns.test").info("once")
    assert stream.getvalue().count("once") == 1


def test_bad_level_names_the_choices():
    with pytest.raises(logs.LevelError, match="debug, info, warning, error"):
        logs.parse_level("loud")
