"""The worker's configuration as a user meets it: `python -m worker` with a
bad file exits 78 naming the key, `--check-config` validates, resolv.conf
supplies the default upstream (minus our own address), and a valid file's
settings reach the running worker."""
from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from helpers.worker import Worker

pytestmark = pytest.mark.netns

LISTEN = "127.0.0.1:5353"


@pytest.fixture
def ns_resolv_conf(netns):
    """Write the namespace's own /etc/resolv.conf (`ip netns exec` bind-mounts
    /etc/netns/NAME/resolv.conf over /etc/resolv.conf)."""
    parent = Path("/etc/netns")
    made_parent = not parent.exists()
    directory = parent / netns.name
    directory.mkdir(parents=True, exist_ok=True)

    def write(text: str) -> None:
        (directory / "resolv.conf").write_text(text)
    yield write
    shutil.rmtree(directory, ignore_errors=True)
    if made_parent:
        try:
            parent.rmdir()
        except OSError:       # another test's namespace still has its directory there
            pass


def run_worker(netns, *args: str, timeout: float = 20):
    return netns.run([sys.executable, "-m", "worker", *args], check=False, timeout=timeout)


def test_bad_config_exits_78_naming_file_and_key(netns, tmp_path):
    bad = tmp_path / "twindns.toml"
    bad.write_text('[[upstream]]\nzone = "."\nservers = ["127.0.0.2"]\n'
                   '[[upstream]]\nzone = "cluster.local"\nservers = ["127.0.0.3"]\ntimeout = "fast"\n')
    p = run_worker(netns, "--listen", LISTEN, "--config", str(bad))
    assert p.returncode == 78
    assert f'{bad}: upstream[1].timeout = "fast": expected a number of seconds > 0' in p.stderr
    # It never started serving.
    assert "serving" not in p.stderr


def test_unknown_key_in_a_worker_section_exits_78(netns, tmp_path):
    bad = tmp_path / "twindns.toml"
    bad.write_text('listen = ["169.254.20.10"]\n[cache]\ncapacity = 100\nsize = 5\n')
    p = run_worker(netns, "--listen", LISTEN, "--upstream", "127.0.0.2", "--config", str(bad))
    assert p.returncode == 78
    assert f"{bad}: cache.size: unknown key" in p.stderr


def test_upstream_that_is_our_own_listen_address_exits_78(netns):
    p = run_worker(netns, "--listen", LISTEN, "--upstream", LISTEN)
    assert p.returncode == 78
    assert "--upstream" in p.stderr and "loop" in p.stderr


def test_check_config(netns, tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[[upstream]]\nservers = ["10.96.0.10", "[2001:db8::1]:5353"]\nforce_tcp = true\n')
    p = run_worker(netns, "--check-config", str(good), "--listen", LISTEN)
    assert p.returncode == 0, p.stderr
    bad = tmp_path / "bad.toml"
    bad.write_text('[[header]]\nset = ["ra"]\nclear = ["ra"]\n')
    p = run_worker(netns, "--check-config", str(bad), "--listen", LISTEN)
    assert p.returncode == 78
    assert f'{bad}: header[0].clear = ["ra"]: expected flags not also in header[0].set' in p.stderr


def test_default_upstream_is_resolv_conf_minus_our_own_address(netns, tmp_path, upstream,
                                                              ns_resolv_conf):
    # Our own address is listed first: forwarding to it would loop.
    ns_resolv_conf(f"nameserver 127.0.0.1\nnameserver {upstream.addr}\n")
    w = Worker(netns, tmp_path / "worker", listen="127.0.0.1:53", upstream=None)
    try:
        reply = w.ask("a.test")
        assert [rd.address for rd in reply.answer[0]] == ["192.0.2.10"]
        assert upstream.queries() == 1
    finally:
        w.stop()


def test_resolv_conf_with_only_our_own_address_exits_78(netns, ns_resolv_conf):
    ns_resolv_conf("nameserver 127.0.0.1\n")
    p = run_worker(netns, "--listen", "127.0.0.1:53")
    assert p.returncode == 78
    assert "resolv.conf" in p.stderr and "not one of our listen addresses" in p.stderr


def test_cache_settings_from_the_file_reach_the_worker(netns, tmp_path, upstream):
    # a.test has TTL 300 at the upstream; max_ttl caps what clients see.
    w = Worker(netns, tmp_path / "worker", upstream=upstream.server,
               config="[cache]\nmax_ttl = 7\n")
    try:
        assert w.ask("a.test").answer[0].ttl <= 7
    finally:
        w.stop()
