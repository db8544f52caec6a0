"""The supervisor's configuration: top-level keys, `[interface]`,
`[firewall]` and `[supervisor]` of the twindns TOML file.

`[cache]`, `[[upstream]]` and `[[header]]` belong to the worker
(docs/internals.md, "Config ownership"): they are accepted here and checked
by `python -m worker --check-config` (see `worker_check_argv`).

`load(None)` reads /etc/twindns/twindns.toml when it exists, else the
embedded default (supervisor/default.toml, shipped with the package), so a
bare host runs with no file at all.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable, Mapping

from contract import child, envexpand
from contract.child import ChildTimeout
from contract.endpoint import Endpoint, parse_endpoint
from contract import validate
from contract.validate import format_value
from contract.exits import EX_CONFIG

SYSTEM_CONFIG = "/etc/twindns/twindns.toml"
EMBEDDED_CONFIG = str(Path(__file__).with_name("default.toml"))
WORKER_SECTIONS = ("cache", "upstream", "header")
LOG_LEVELS = ("debug", "info", "warning", "error")
BACKENDS = ("auto", "legacy", "nft")
METRICS_NAMES = ("twindns", "coredns", "both")


class ConfigError(ValueError):
    """The config file is unreadable, not TOML, or a key has a bad value."""


class _BadValue(Exception):
    """Raised by a validator with what was expected instead."""


@dataclass(frozen=True)
class InterfaceConfig:
    name: str = "nodelocaldns"
    manage: bool = True
    teardown: bool = True


@dataclass(frozen=True)
class FirewallConfig:
    manage: bool = True
    backend: str = "auto"
    resync_interval: float = 60.0


@dataclass(frozen=True)
class SupervisorConfig:
    probe_interval: float = 1.0
    probe_failures: int = 3
    drain_timeout: float = 5.0
    ready_timeout: float = 10.0
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    health_drop_window: float = 30.0
    reload_on_change: bool = False     # a valid change of the file is rolled onto by itself (a ConfigMap)


@dataclass(frozen=True)
class Config:
    path: str
    raw_text: str          # exactly what was validated; workers get it via --config-fd
    listen: tuple[str, ...] = ("169.254.20.10",)
    port: int = 53
    user: str = "twindns"
    control_socket: str = "/run/twindns/control.sock"
    health_listen: Endpoint | None = Endpoint("169.254.20.10", 8080)
    metrics_listen: Endpoint | None = Endpoint("169.254.20.10", 9253)
    log_level: str = "info"
    metrics_names: str = "twindns"
    interface: InterfaceConfig = field(default_factory=InterfaceConfig)
    firewall: FirewallConfig = field(default_factory=FirewallConfig)
    supervisor: SupervisorConfig = field(default_factory=SupervisorConfig)

    def listen_endpoints(self) -> tuple[Endpoint, ...]:
        return tuple(Endpoint(ip, self.port) for ip in self.listen)

    def health_ports(self) -> tuple[int, ...]:
        """Ports of the HTTP endpoints served on one of our listen IPs (they get NOTRACK too)."""
        ports = {e.port for e in (self.health_listen, self.metrics_listen)
                 if e is not None and e.host in self.listen}
        return tuple(sorted(ports))

    def net_spec(self):
        """The netsetup.NetSpec this config asks for."""
        from netsetup import NetSpec  # lazy: `twindns status` must not pay for pyroute2
        return NetSpec(addresses=self.listen, port=self.port, health_ports=self.health_ports(),
                       interface=self.interface.name, manage_interface=self.interface.manage,
                       manage_firewall=self.firewall.manage, backend=self.firewall.backend)


# -- validators: value -> converted value, or _BadValue(expectation) -------

def _checked(primitive: Callable, *args, **kw) -> Callable[[Any], Any]:
    """A contract.validate check as a validator of this module."""
    def check(v: Any) -> Any:
        try:
            return primitive(v, *args, **kw)
        except validate.Invalid as e:
            raise _BadValue(f"expected {e}") from None
    return check


_boolean = _checked(validate.boolean)
_seconds = _checked(validate.seconds, finite=False)


def _int_range(lo: int, hi: int, what: str) -> Callable[[Any], int]:
    return _checked(validate.integer, lo, hi, what)


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    return _checked(validate.choice, options)


def _nonempty_str(what: str) -> Callable[[Any], str]:
    def check(v: Any) -> str:
        if not isinstance(v, str) or not v or "\0" in v:
            raise _BadValue(f"expected {what}")
        return v
    return check


def _ifname(v: Any) -> str:
    # IFNAMSIZ is 16 including the NUL; '/' and whitespace are refused by the kernel.
    if not isinstance(v, str) or not 1 <= len(v) <= 15 or any(c in v for c in "/ \t\n:") or v in (".", ".."):
        raise _BadValue("expected an interface name of 1-15 characters without '/', ':' or spaces")
    return v


def _abs_path(v: Any) -> str:
    if not isinstance(v, str) or not v.startswith("/") or "\0" in v:
        raise _BadValue("expected an absolute path")
    return v


def _ip(v: Any) -> str:
    try:
        return str(ipaddress.ip_address(v))
    except ValueError:
        raise _BadValue("expected an IP address") from None


def _listen(v: Any) -> tuple[str, ...]:
    expect = 'expected a non-empty list of distinct IP addresses, e.g. ["169.254.20.10"]'
    if not isinstance(v, list) or not v or not all(isinstance(x, str) for x in v):
        raise _BadValue(expect)
    try:
        ips = tuple(str(ipaddress.ip_address(x)) for x in v)
    except ValueError:
        raise _BadValue(expect) from None
    if len(set(ips)) != len(ips):
        raise _BadValue(expect)
    return ips


def _endpoint(v: Any) -> Endpoint | None:
    expect = 'expected "IP:PORT" (e.g. "169.254.20.10:8080"), or "" to disable'
    if v == "":
        return None
    if not isinstance(v, str):
        raise _BadValue(expect)
    try:
        return parse_endpoint(v)
    except ValueError:
        raise _BadValue(expect) from None


_PORT = _int_range(1, 65535, "a port number 1-65535")

_TOP = MappingProxyType({
    "listen": _listen,
    "port": _PORT,
    "user": _nonempty_str("a user name"),
    "control_socket": _abs_path,
    "health_listen": _endpoint,
    "metrics_listen": _endpoint,
    "log_level": _choice(LOG_LEVELS),
    "metrics_names": _choice(METRICS_NAMES),
})
_INTERFACE = MappingProxyType({"name": _ifname, "manage": _boolean, "teardown": _boolean})
_FIREWALL = MappingProxyType({"manage": _boolean, "backend": _choice(BACKENDS), "resync_interval": _seconds})
_SUPERVISOR = MappingProxyType({
    "probe_interval": _seconds,
    "probe_failures": _int_range(1, 100, "an integer 1-100"),
    "drain_timeout": _seconds,
    "ready_timeout": _seconds,
    "backoff_initial": _seconds,
    "backoff_max": _seconds,
    "health_drop_window": _seconds,
    "reload_on_change": _boolean,
})
_TABLES = MappingProxyType({"interface": (_INTERFACE, InterfaceConfig), "firewall": (_FIREWALL, FirewallConfig),
                            "supervisor": (_SUPERVISOR, SupervisorConfig)})


def _apply(path: str, prefix: str, data: dict, schema: Mapping[str, Callable],
           also_known: tuple[str, ...] = ()) -> dict:
    out = {}
    for key, value in data.items():
        dotted = prefix + key
        check = schema.get(key)
        if check is None:
            raise ConfigError(validate.unknown_key(path, dotted, sorted((*schema, *also_known))))
        try:
            out[key] = check(value)
        except _BadValue as e:
            raise ConfigError(f"{path}: {dotted} = {format_value(value)}: {e}") from None
    return out


def parse(text: str, path: str) -> Config:
    """Validate the supervisor's part of `text` (the contents of `path`)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    tables = (*_TABLES, *WORKER_SECTIONS)
    top = {k: v for k, v in data.items() if k not in tables}
    kwargs: dict[str, Any] = _apply(path, "", top, _TOP, also_known=tables)
    for name, (schema, cls) in _TABLES.items():
        table = data.get(name, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: {name} = {format_value(table)}: expected a table ([{name}])")
        kwargs[name] = cls(**_apply(path, name + ".", table, schema))
    sup = kwargs["supervisor"]
    if sup.backoff_max < sup.backoff_initial:
        raise ConfigError(f"{path}: supervisor.backoff_max = {format_value(sup.backoff_max)}: "
                          f"expected a number of seconds >= supervisor.backoff_initial ({sup.backoff_initial})")
    return Config(path=path, raw_text=text, **kwargs)


def resolve_path(path: str | None) -> str:
    """The file `load(path)` reads."""
    if path is not None:
        return path
    return SYSTEM_CONFIG if Path(SYSTEM_CONFIG).exists() else EMBEDDED_CONFIG


def load(path: str | None) -> Config:
    """Read and validate the supervisor's part of a config file (see module doc for None)."""
    path = resolve_path(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 (byte {e.start})") from None
    return parse(expand_env(text, path), path)


def expand_env(text: str, path: str) -> str:
    """The file's text with its ${NAME} references replaced (contract/envexpand.py)."""
    try:
        return envexpand.expand(text, os.environ, path)
    except envexpand.EnvExpandError as e:
        raise ConfigError(str(e)) from None


def worker_check_argv(config: Config) -> list[str]:
    """The command that validates the worker's sections of `config` (exit 0 or 78)."""
    argv = [sys.executable, "-m", "worker", "--check-config", config.path]
    for ep in config.listen_endpoints():
        argv += ["--listen", str(ep)]
    return argv


def check_with_worker(config: Config, timeout: float = 30.0) -> None:
    """Run the worker's validation; raise ConfigError with its message when it refuses."""
    try:
        done = child.run_sync(worker_check_argv(config), timeout)
    except ChildTimeout:
        raise ConfigError(f"{config.path}: worker config check did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        raise ConfigError(worker_check_message(config, done.returncode, done.stderr.decode(errors="replace")))


async def check_with_worker_async(config: Config, timeout: float = 30.0) -> None:
    """check_with_worker() for the supervisor's event loop."""
    try:
        done = await child.run(worker_check_argv(config), timeout)
    except ChildTimeout:
        raise ConfigError(f"{config.path}: worker config check did not finish in {timeout:g} s") from None
    if done.returncode != 0:
        raise ConfigError(worker_check_message(config, done.returncode, done.stderr.decode(errors="replace")))


def worker_check_message(config: Config, returncode: int, stderr: str) -> str:
    """The operator-facing error for a failed worker check."""
    msg = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    msg = msg.removeprefix("config error: ")
    if returncode == EX_CONFIG and msg:
        return msg if config.path in msg else f"{config.path}: {msg}"
    return f"{config.path}: worker config check failed (exit {returncode}): {msg or 'no message'}"


def check_config_main(args) -> int:
    """`twindns check-config [F]`: 0 valid, 78 invalid (message on stderr)."""
    try:
        config = load(args.file or args.config)
        check_with_worker(config)
    except ConfigError as e:
        print(f"twindns: {e}", file=sys.stderr)
        return EX_CONFIG
    print(f"{config.path}: ok")
    return 0
