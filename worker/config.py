"""The worker's configuration: the `[cache]`, `[[upstream]]` and `[[header]]`
sections of the twindns TOML file. Other top-level keys belong to the
supervisor and are ignored here.

Skeleton: the dataclasses are the contract between modules; `load()` is to be
completed with full validation (see docs/internals.md, "Config ownership").
"""
from __future__ import annotations

from dataclasses import dataclass, field


class ConfigError(ValueError):
    """A config value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class CacheConfig:
    capacity: int = 10000
    min_ttl: int = 0
    max_ttl: int = 86400
    negative_max_ttl: int = 3600
    servfail_ttl: int = 5


@dataclass(frozen=True)
class UpstreamZone:
    zone: str                                  # absolute, lower case: "." or "cluster.local."
    servers: tuple[tuple[str, int], ...]        # (ip, port), resolv.conf already expanded
    force_tcp: bool = False
    timeout: float = 2.0


@dataclass(frozen=True)
class HeaderRule:
    zone: str                                  # absolute, lower case
    set: frozenset[str] = frozenset()          # subset of {"ra", "aa", "rd"}
    clear: frozenset[str] = frozenset()


@dataclass(frozen=True)
class WorkerConfig:
    cache: CacheConfig = field(default_factory=CacheConfig)
    upstreams: tuple[UpstreamZone, ...] = ()
    headers: tuple[HeaderRule, ...] = ()
