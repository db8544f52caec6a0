"""`twindns install --now` under a real systemd from a place the unit's
sandbox hides (ProtectHome=yes): refused before anything changes, naming
the command that works, instead of a unit failing 203/EXEC in a loop."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.netns

WHEELS = "/var/tmp/twindns-wheels"      # where the systemd_container fixture put this checkout's wheels


def test_install_now_from_a_venv_under_root_is_refused_and_changes_nothing(systemd_container):
    c = systemd_container
    c.run(["python3", "-m", "venv", "/root/venv"])
    c.run(["/root/venv/bin/pip", "install", "--quiet", "--no-index", "--disable-pip-version-check",
           "--find-links", WHEELS, "twindns"], timeout=600)
    before = c.run(["sh", "-c", "ls /etc/systemd/system /etc/twindns /usr/local/bin; getent passwd twindns"],
                   check=False).stdout
    p = c.run(["/root/venv/bin/twindns", "install", "--now"], check=False, timeout=120)
    assert p.returncode == 1, p.stdout + p.stderr
    assert "/root/venv/bin/twindns is under /root" in p.stderr and "nothing was changed" in p.stderr
    assert "/opt/twindns/bin/twindns install --now" in p.stderr, p.stderr
    after = c.run(["sh", "-c", "ls /etc/systemd/system /etc/twindns /usr/local/bin; getent passwd twindns"],
                  check=False).stdout
    assert after == before
    assert c.run(["systemctl", "is-active", "twindns"], check=False).stdout.strip() != "active"
