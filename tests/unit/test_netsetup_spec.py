"""NetSpec validation and the small pure helpers around it."""
from __future__ import annotations

import pytest

from netsetup import InvalidSpec, NetSpec, NetsetupError
from netsetup.caps import CAP_NET_ADMIN, effective_caps


def test_defaults_follow_the_reference_config():
    spec = NetSpec()
    assert spec.addresses == ("169.254.20.10",) and spec.port == 53 and spec.interface == "nodelocaldns"
    assert spec.backend == "auto" and spec.manage_interface and spec.manage_firewall


def test_addresses_are_normalised_and_split_by_family():
    spec = NetSpec(addresses=["169.254.20.10", "FD00:0::10", "169.254.20.10"])
    assert spec.addresses == ("169.254.20.10", "fd00::10")
    assert spec.addresses_of(4) == ("169.254.20.10",) and spec.addresses_of(6) == ("fd00::10",)


@pytest.mark.parametrize("kwargs, words", [
    ({"addresses": ()}, "addresses"),
    ({"addresses": "169.254.20.10"}, "addresses"),
    ({"addresses": ("169.254.20.300",)}, "169.254.20.300"),
    ({"port": 0}, "port = 0"),
    ({"health_ports": (70000,)}, "health_ports = 70000"),
    ({"interface": "a-name-that-is-too-long"}, "interface"),
    ({"interface": "a/b"}, "interface"),
    ({"backend": "iptables"}, "backend = 'iptables': expected one of auto, legacy, nft"),
])
def test_bad_values_are_one_clear_error(kwargs, words):
    with pytest.raises(InvalidSpec) as exc:
        NetSpec(**kwargs)
    assert words in str(exc.value) and "\n" not in str(exc.value)
    assert isinstance(exc.value, NetsetupError)


def test_effective_caps_reads_capeff(tmp_path):
    status = tmp_path / "status"
    status.write_text("Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t0000000000001000\n")
    assert effective_caps(str(status)) >> CAP_NET_ADMIN & 1
    status.write_text("CapEff:\t0000000000000400\n")
    assert not effective_caps(str(status)) >> CAP_NET_ADMIN & 1
