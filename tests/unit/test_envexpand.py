"""${NAME} in a config file: one ConfigMap for every node; a missing or unsafe value is a clear error."""
from __future__ import annotations

import pytest

from contract.envexpand import EnvExpandError, expand
from supervisor.config import ConfigError, load

ENV = {"KUBE_DNS_SERVICE_HOST": "10.96.0.10", "EMPTY": ""}


def test_references_defaults_escapes_and_comments():
    text = ('listen = ["169.254.20.10", "${KUBE_DNS_SERVICE_HOST}"]\n'
            'zone = "${CLUSTER_DOMAIN:-cluster.local}"\n'
            'x = "${EMPTY:-fallback} $${literal}"\n'
            '# servers = ["${NOT_SET}"]\n')
    assert expand(text, ENV, "f") == ('listen = ["169.254.20.10", "10.96.0.10"]\n'
                                      'zone = "cluster.local"\n'
                                      'x = "fallback ${literal}"\n'
                                      '# servers = ["${NOT_SET}"]\n')


@pytest.mark.parametrize("line, expected", [
    ('a = "${NOT_SET}"', "f: line 2: ${NOT_SET}: environment variable NOT_SET is not set"),
    ('a = "${1BAD}"', "f: line 2: ${1BAD}: expected ${NAME} or ${NAME:-default}"),
    ('a = "${QUOTE}"', "f: line 2: ${QUOTE} = 'x\"y': expected a value without quotes"),
])
def test_errors_name_the_line(line, expected):
    with pytest.raises(EnvExpandError) as e:
        expand("# first\n" + line + "\n", {"QUOTE": 'x"y'}, "f")
    assert str(e.value).startswith(expected)


def test_config_load_expands_and_names_the_file(tmp_path, monkeypatch):
    f = tmp_path / "twindns.toml"
    f.write_text('listen = ["169.254.20.10", "${KUBE_DNS_SERVICE_HOST}"]\n')
    monkeypatch.setenv("KUBE_DNS_SERVICE_HOST", "10.96.0.10")
    config = load(str(f))
    assert config.listen == ("169.254.20.10", "10.96.0.10")
    assert "10.96.0.10" in config.raw_text          # what the workers get
    monkeypatch.delenv("KUBE_DNS_SERVICE_HOST")
    with pytest.raises(ConfigError, match=f"{f}: line 1: .*KUBE_DNS_SERVICE_HOST is not set"):
        load(str(f))
