"""A capacity limit with eviction: memory stays bounded under a flood of
unique names (10x the capacity), and the STATS counters say so."""
from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

from helpers import dnsperf
from helpers.worker import SupervisedWorker, listen_sockets

pytestmark = pytest.mark.netns

CAPACITY = 2000
CONFIG = f'[cache]\ncapacity = {CAPACITY}\n\n[[upstream]]\nzone = "."\nservers = ["127.0.0.2"]\n'


def flood(netns, path: Path, prefix: str, count: int) -> dnsperf.DnsperfResult:
    qfile = dnsperf.write_queries(path, [(f"{prefix}{i}.hit.test", "A") for i in range(count)])
    argv = ["dnsperf", "-s", "127.0.0.1", "-p", "53", "-d", str(qfile), "-n", "1", "-c", "4", "-q", "200",
            "-t", "3"]
    return dnsperf.run(argv, netns=netns)


def test_unique_name_flood_stays_within_capacity(netns, upstream, tmp_path):
    udp, tcp = listen_sockets(netns)
    w = SupervisedWorker(netns, tmp_path, CONFIG, [udp], [tcp])
    try:
        w.wait_ready()
        pid = w.request("stats")["stats"]["pid"]
        first = flood(netns, tmp_path / "q1.txt", "a", 5 * CAPACITY)
        rss_after_first = psutil.Process(pid).memory_info().rss
        second = flood(netns, tmp_path / "q2.txt", "b", 5 * CAPACITY)
        rss_after_second = psutil.Process(pid).memory_info().rss
        stats = w.request("stats")["stats"]
    finally:
        w.close()
        udp.close()
        tcp.close()
    answered = first.completed + second.completed
    assert answered >= 9 * CAPACITY, f"flood mostly answered ({answered})"
    assert stats["cache_entries"] <= CAPACITY
    assert stats["cache_evictions"] >= answered - CAPACITY - 50
    # The second flood replaces the first one's entries one for one: no growth
    # beyond allocator noise (one entry is ~1 KiB; 10,000 kept would be ~10 MiB).
    growth = rss_after_second - rss_after_first
    assert growth < 3 * 1024 * 1024, f"RSS grew {growth / 1e6:.1f} MB while the cache was full"
