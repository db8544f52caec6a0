"""The leaf package of cross-process contracts: endpoint parsing, the
child-with-deadline helper, and that it imports none of our packages."""
from __future__ import annotations

import ast
import asyncio
import os
import sys
import time
from pathlib import Path

import pytest

from contract import child
from contract.endpoint import Endpoint, format_server, parse_endpoint, parse_server

OURS = ("supervisor", "worker", "netsetup")


def test_contract_imports_none_of_our_packages():
    for path in Path(child.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not [n for n in names if n.split(".")[0] in OURS], f"{path.name} imports {names}"


def test_endpoints_round_trip_through_their_text():
    assert parse_endpoint("169.254.20.10:8080") == Endpoint("169.254.20.10", 8080)
    assert parse_endpoint("[fd00::1]:53") == Endpoint("fd00::1", 53)
    assert str(Endpoint("fd00::1", 53)) == "[fd00::1]:53" == format_server(("fd00::1", 53))
    for bad in ("169.254.20.10", "1.2.3.4:0", "1.2.3.4:70000", "host:80", "[::1]:x"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)
    assert parse_server("10.0.0.1") == ("10.0.0.1", 53)


def test_child_output_and_exit_code():
    done = child.run_sync([sys.executable, "-c", "import sys; print(sys.stdin.read()); "
                                                "sys.exit('bad thing')"], 10, input=b"hello")
    assert (done.returncode, done.stdout, done.last_error_line()) == (1, b"hello\n", "bad thing")
    done = asyncio.run(child.run([sys.executable, "-c", "print('ok')"], 10))
    assert (done.returncode, done.stdout) == (0, b"ok\n")


def pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_child_past_its_deadline_is_killed_and_reaped(tmp_path):
    pidfile = tmp_path / "pid"
    argv = ["sh", "-c", f"echo $$ > {pidfile}; exec sleep 30"]
    for runner in (lambda: asyncio.run(child.run(argv, 0.5)), lambda: child.run_sync(argv, 0.5)):
        started = time.monotonic()
        with pytest.raises(child.ChildTimeout, match="did not finish in 0.5 s"):
            runner()
        assert time.monotonic() - started < 5
        assert pid_gone(int(pidfile.read_text()))


def test_every_stats_counter_a_worker_reports_is_exported_by_the_supervisor():
    from contract import stats as keys
    from supervisor.metrics import MetricsAggregator
    from worker.cache import Cache
    from worker.stats import Stats

    from worker.upstream_stats import UnwantedReplies

    class NoUpstream:
        unwanted = UnwantedReplies(0)

        def stats(self) -> list:
            return []
    report = Stats().snapshot({keys.SLOT: "A", keys.GENERATION: 1, keys.VERSION: "0"}, Cache(10), NoUpstream())
    assert set(keys.COUNTERS) <= set(report)
    m = MetricsAggregator("0")
    m.update_worker("A", 1, {**report, **{k: 7 for k in keys.COUNTERS}})
    body = m.render()[0].decode()
    for name in ("cache_hits", "cache_misses", "cache_evictions", "cache_prefetches", "cache_stale_served",
                 "malformed_queries", "formerr_responses", "peer_asks"):
        assert f"twindns_{name}_total 7.0" in body, name


def test_validation_primitives_say_what_is_expected():
    from contract import validate
    assert validate.integer(5, 1, 10) == 5 and validate.seconds(2) == 2.0 and validate.seconds(0, zero=True) == 0.0
    assert validate.seconds(float("inf"), finite=False) == float("inf")
    for check, value, expected in (
            (lambda v: validate.integer(v, 1, 10), True, "a whole number from 1 to 10"),
            (lambda v: validate.integer(v, 1, 10, "a port"), 11, "a port"),
            (validate.seconds, 0, "a number of seconds > 0"),
            (lambda v: validate.seconds(v, zero=True), -1, "a number of seconds >= 0"),
            (validate.seconds, float("nan"), "a number of seconds > 0"),
            (validate.seconds, float("inf"), "a number of seconds > 0"),
            (validate.boolean, 1, "true or false"),
            (validate.strings, ["a", 1], "an array of strings"),
            (lambda v: validate.choice(v, ("a", "b")), "c", 'one of "a", "b"')):
        with pytest.raises(validate.Invalid) as e:
            check(value)
        assert str(e.value) == expected
