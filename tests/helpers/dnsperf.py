"""Run dnsperf and read its summary."""
from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class DnsperfResult:
    sent: int
    completed: int
    lost: int
    qps: float
    avg_latency: float
    max_latency: float
    rcodes: dict[str, int] = field(default_factory=dict)
    raw: str = ""


def write_queries(path: Path, names: list[tuple[str, str]]) -> Path:
    path.write_text("".join(f"{n} {t}\n" for n, t in names))
    return path


def mixed_queries(path: Path, n: int = 2000) -> Path:
    """Half long-TTL hits, half 1-second-TTL names: misses are always in flight,
    which is when a careless handover loses queries (DESIGN.md)."""
    names = []
    for i in range(n):
        zone = "hit" if i % 2 == 0 else "short"
        names.append((f"n{i}.{zone}.test", "A"))
    return write_queries(path, names)


def parse(out: str) -> DnsperfResult:
    def num(label: str, cast=int, default=0):
        m = re.search(rf"{label}:\s+([0-9.]+)", out)
        return cast(m.group(1)) if m else default

    lat = re.search(r"Average Latency \(s\):\s+([0-9.]+)\s+\(min [0-9.]+, max ([0-9.]+)\)", out)
    rcodes = {}
    m = re.search(r"Response codes:\s+(.*)", out)
    if m:
        for code, count in re.findall(r"([A-Z]+) (\d+)", m.group(1)):
            rcodes[code] = int(count)
    return DnsperfResult(
        sent=num("Queries sent"), completed=num("Queries completed"), lost=num("Queries lost"),
        qps=num("Queries per second", float, 0.0),
        avg_latency=float(lat.group(1)) if lat else 0.0,
        max_latency=float(lat.group(2)) if lat else 0.0,
        rcodes=rcodes, raw=out,
    )


def dnsperf_argv(server: str, port: int, queryfile: Path, seconds: float,
                 qps: int | None = None, clients: int = 4, threads: int = 1,
                 timeout: float = 2.0, tcp: bool = False, buffer_kib: int | None = None,
                 outstanding: int = 1000, interval: float | None = None) -> list[str]:
    # `outstanding` (-q) bounds the queries in flight: once reached dnsperf stops sending, so
    # an outage shows up as lost queries only if it is larger than qps x the outage.
    argv = ["dnsperf", "-s", server, "-p", str(port), "-d", str(queryfile),
            "-l", str(seconds), "-c", str(clients), "-T", str(threads),
            "-t", str(timeout), "-q", str(outstanding)]
    if interval:
        argv += ["-S", str(interval)]       # a "qps" line per interval: the answer timeline
    if buffer_kib:
        argv += ["-b", str(buffer_kib)]     # capped by net.core.rmem_max
    if qps:
        argv += ["-Q", str(qps)]
    if tcp:
        argv += ["-m", "tcp"]
    return argv


def run(argv: list[str], netns=None, timeout: float = 300) -> DnsperfResult:
    if netns is not None:
        argv = netns.cmd(argv)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0 and "Queries sent" not in p.stdout:
        raise RuntimeError(f"dnsperf failed: {p.stdout}\n{p.stderr}")
    return parse(p.stdout)
