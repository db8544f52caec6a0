"""The last config the supervisor accepted, and how the file on disk compares.

An edit that made the config file invalid must never take the node's DNS
down at the next `systemctl restart` or boot. Every config the supervisor
accepts (at start or on reload) is copied to `STATE_DIR/accepted.toml`,
with the file it came from in `accepted.json`. When `twindns run` finds
that file invalid, it starts on the copy instead, degraded and saying so in
the journal, `twindns status`, `/health` and `/metrics`, until a reload
onto a valid file clears it.

`DiskConfig` answers, when asked, whether the file on disk is what runs
and whether it is valid; it re-validates only when the bytes changed, so
asking is cheap (one small read).
"""
from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from supervisor import logs
from supervisor.config import Config, ConfigError, check_with_worker, check_with_worker_async, expand_env, load, \
    parse, resolve_path

log = logging.getLogger("twindns.config")

STATE_DIR = "/var/lib/twindns"
ACCEPTED = "accepted.toml"
ACCEPTED_META = "accepted.json"


def state_dir(arg: str | None = None) -> Path:
    """--state-dir, else $TWINDNS_STATE_DIR, else /var/lib/twindns (systemd's StateDirectory=twindns)."""
    return Path(arg or os.environ.get("TWINDNS_STATE_DIR") or STATE_DIR)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def remember(config: Config, directory: Path) -> None:
    """Keep `config` as the last accepted one; a failure costs only the fallback."""
    if Path(config.path) == directory / ACCEPTED:
        return                                  # running on the copy already
    meta = {"source": os.path.abspath(config.path),
            "sha256": hashlib.sha256(config.raw_text.encode()).hexdigest(),
            "accepted_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        current = directory / ACCEPTED
        if (current.is_file() and current.read_text() == config.raw_text
                and _meta(directory).get("source") == meta["source"]):
            return
        _write_atomically(current, config.raw_text.encode())
        _write_atomically(directory / ACCEPTED_META, json.dumps(meta).encode())
    except OSError as e:
        logs.event(log, "accepted_config_not_saved", logging.WARNING, directory=str(directory),
                   error=e.strerror or str(e),
                   detail="an invalid config file will stop twindns at its next start")


def _meta(directory: Path) -> dict:
    try:
        meta = json.loads((directory / ACCEPTED_META).read_text())
        return meta if isinstance(meta, dict) else {}
    except (OSError, ValueError):
        return {}


def fallback(config_arg: str | None, directory: Path) -> Config | None:
    """The last accepted copy of the file `config_arg` names, or None when there is none."""
    meta = _meta(directory)
    if meta.get("source") != os.path.abspath(resolve_path(config_arg)):
        return None
    path = directory / ACCEPTED
    try:
        return parse(path.read_text(), str(path))
    except (OSError, UnicodeDecodeError, ConfigError):
        return None


def load_for_start(config_arg: str | None, directory: Path) -> Config:
    """The config `twindns run` starts on: the file, or when the file is
    invalid, its last accepted copy (said at ERROR)."""
    try:
        config = load(config_arg)
        check_with_worker(config)
        return config
    except ConfigError as e:
        copy = fallback(config_arg, directory)
        if copy is None:
            raise
        try:
            check_with_worker(copy)            # e.g. resolv.conf changed since it was accepted
        except ConfigError:
            raise e from None
        # Loud on purpose: the node keeps its DNS, but someone must fix the file.
        logs.setup(copy.log_level)
        logs.event(log, "config_invalid_using_last_accepted", logging.ERROR, error=str(e),
                   running=copy.path, accepted_at=accepted_at(directory))
        return copy


def accepted_at(directory: Path) -> str | None:
    return _meta(directory).get("accepted_at")


@dataclass(frozen=True)
class DiskVerdict:
    path: str                   # the file reload reads
    differs: bool               # its bytes are not what runs
    error: str | None           # why it is invalid; None when valid (or unreadable: see error)

    @property
    def valid(self) -> bool:
        return self.error is None


class DiskConfig:
    """Compares the config file on disk with the running config, on demand."""

    def __init__(self, config_arg: str | None, running: Config, directory: Path) -> None:
        self.config_arg = config_arg
        self.directory = directory
        self.running = running
        self.on_fallback = Path(running.path) == directory / ACCEPTED
        self._seen: bytes | None = None
        self._refreshing = asyncio.Lock()
        self.verdict: DiskVerdict | None = None
        self._rolled_onto: DiskVerdict | None = None

    def accepted(self, config: Config) -> None:
        """`config` now runs (start, or a reload that succeeded)."""
        self.running = config
        self.on_fallback = Path(config.path) == self.directory / ACCEPTED
        self._seen = None
        remember(config, self.directory)

    @property
    def degraded(self) -> bool:
        return self.on_fallback or (self.verdict is not None and not self.verdict.valid)

    async def refresh(self) -> DiskVerdict:
        """Read the file again; validate it (supervisor and worker parts) only if it changed.
        One at a time: a second caller (status while the periodic check runs)
        must get the verdict on the new bytes, not the one from before them."""
        async with self._refreshing:
            return await self._refresh()

    async def _refresh(self) -> DiskVerdict:
        path = resolve_path(self.config_arg)
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raw = b""
            error: str | None = f"{path}: cannot read: {e.strerror}"
        else:
            error = None
        if raw == self._seen and self.verdict is not None and self.verdict.path == path:
            return self.verdict
        self._seen = raw
        differs = _as_run(raw, path) != self.running.raw_text.encode() or self.on_fallback
        if error is None and differs:
            error = await _validate(raw, path)
        was = self.verdict
        self.verdict = DiskVerdict(path, differs, error)
        if error is not None and (was is None or was.error != error):
            logs.event(log, "config_on_disk_invalid", logging.ERROR, path=path, error=error,
                       running=self.running.path)
        return self.verdict

    def new_version_to_roll_onto(self, verdict: DiskVerdict) -> bool:
        """With `[supervisor] reload_on_change` (a mounted ConfigMap): True once for each valid new
        version of the file. An invalid one was refused by refresh(), loudly, and what runs stays."""
        if not (self.running.supervisor.reload_on_change and verdict.valid and verdict.differs
                and verdict is not self._rolled_onto):
            return False
        self._rolled_onto = verdict
        logs.event(log, "config_file_changed_reloading", path=verdict.path)
        return True

    def status(self) -> dict:
        v = self.verdict
        return {"running": self.running.path, "file": v.path if v else resolve_path(self.config_arg),
                "file_differs": v.differs if v else None, "file_valid": v.valid if v else None,
                "file_error": v.error if v else None, "running_last_accepted": self.on_fallback,
                "accepted_at": accepted_at(self.directory), "degraded": self.degraded}

    def problems(self) -> list[str]:
        """One line per thing an operator must fix, for /health and `twindns status`."""
        out = []
        v = self.verdict
        if v is not None and not v.valid:
            out.append(f"config: {v.error}")
        if self.on_fallback:
            out.append(f"config: running the last accepted config ({self.running.path}, "
                       f"accepted {accepted_at(self.directory) or '?'}), not {v.path if v else 'the file'}")
        elif v is not None and v.valid and v.differs:
            out.append(f"config: {v.path} differs from the running config (`twindns reload` applies it)")
        return out


def _as_run(raw: bytes, path: str) -> bytes:
    """The file's bytes as a supervisor would run them (environment references expanded)."""
    try:
        return expand_env(raw.decode("utf-8"), path).encode()
    except (UnicodeDecodeError, ConfigError):
        return raw                           # differs; _validate says why


async def _validate(raw: bytes, path: str) -> str | None:
    try:
        config = parse(expand_env(raw.decode("utf-8"), path), path)
        await check_with_worker_async(config)
    except UnicodeDecodeError as e:
        return f"{path}: not UTF-8 (byte {e.start})"
    except ConfigError as e:
        return str(e)
    return None
