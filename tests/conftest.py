"""Fixtures shared by every test directory.

Tests that need root and network namespaces use the `netns` fixture (or the
`netns` marker). Without root they skip, unless TWINDNS_REQUIRE_NETNS=1 (CI),
where a skip would hide a missing feature, so they fail instead.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from helpers.netns import Netns  # noqa: E402
from helpers import unbound as unbound_mod  # noqa: E402

REQUIRED_TOOLS = ("ip", "unbound", "unbound-control", "dnsperf", "dig", "conntrack",
                  "iptables-legacy", "iptables-nft", "nft")


def _netns_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if missing:
        return f"missing tools: {', '.join(missing)}"
    return None


def require_netns() -> None:
    """Skip (or fail, under TWINDNS_REQUIRE_NETNS=1) when netns tests cannot run."""
    why = _netns_unavailable()
    if why is None:
        return
    if os.environ.get("TWINDNS_REQUIRE_NETNS") == "1":
        pytest.fail(f"netns test cannot run: {why} (TWINDNS_REQUIRE_NETNS=1)")
    pytest.skip(why)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "netns" in item.keywords or "chaos" in item.keywords:
            item.add_marker(pytest.mark.usefixtures("_netns_required"))


LOG_TAIL = 6000      # characters of each log a failed test leaves in its report


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # A CI failure is read from its report alone, long after the tmp dirs are
    # gone: put the tail of every log the test wrote (run.log, unbound's …) in it.
    outcome = yield
    report = outcome.get_result()
    tmp = item.funcargs.get("tmp_path") if hasattr(item, "funcargs") else None
    if report.when != "call" or not report.failed or tmp is None:
        return
    for path in sorted(Path(tmp).rglob("*.log")):
        text = path.read_text(errors="replace")
        report.sections.append((f"log {path.relative_to(tmp)} (last {LOG_TAIL} chars)", text[-LOG_TAIL:]))


@pytest.fixture
def _netns_required():
    require_netns()


@pytest.fixture
def netns():
    """A fresh network namespace, removed with everything inside it afterwards."""
    require_netns()
    ns = Netns()
    try:
        yield ns
    finally:
        ns.close()


@pytest.fixture
def upstream(netns, tmp_path):
    """unbound on 127.0.0.2:53 inside the test's namespace, serving helpers.unbound's zones."""
    u = unbound_mod.Unbound(tmp_path / "unbound", addr="127.0.0.2", port=53, netns=netns)
    try:
        yield u
    finally:
        u.stop()


@pytest.fixture(scope="session")
def systemd_container(tmp_path_factory):
    """One Debian container booted with systemd as PID 1 per test session
    (tests/helpers/systemd_container.py), with twindns installed from this
    checkout's wheels into /opt/twindns; `.twindns` is that command."""
    require_netns()
    missing = [t for t in ("debootstrap", "systemd-nspawn", "nsenter") if shutil.which(t) is None]
    if missing:
        why = f"missing tools: {', '.join(missing)}"
        if os.environ.get("TWINDNS_REQUIRE_NETNS") == "1":
            pytest.fail(f"systemd container cannot run: {why} (TWINDNS_REQUIRE_NETNS=1)")
        pytest.skip(why)
    from helpers import systemd_container as sc
    root = sc.debian_root()
    wheels = sc.wheels_for_twindns(tmp_path_factory.mktemp("wheels"))
    container = sc.Container.boot(root, log_path=tmp_path_factory.mktemp("nspawn") / "console.log")
    try:
        container.twindns = container.install_wheels(wheels)
        yield container
    finally:
        container.close()


@pytest.fixture
def python_exe() -> str:
    return sys.executable
