"""`twindns install [--root DIR] [--now]` and `twindns uninstall [--root DIR]`.

install:   the units (twindns.service, and twindns-net.service which holds the
           network state across a restart; their commands pointing at this
           installation's `twindns`),
           the system user workers run as, the default config when there is
           none (an existing one is never touched), daemon-reload + enable
           (+ start with --now).
uninstall: stop + disable (the supervisor drains and removes its network
           state on stop), `twindns net teardown` in case it did not, the
           units removed. The config and the user stay: the config is the
           operator's, and files may still be owned by the user; removing
           them is one `rm` and one `userdel` away, and we say so.

Both are idempotent and print one line per step. systemctl is only asked
to act on a live system when DIR is / and systemd is PID 1; otherwise (an
image tree, a container, CI) files go under DIR, enabling is done offline
with `systemctl --root DIR`, and the skipped steps are named.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
from importlib import resources
from pathlib import Path

from supervisor.config import EMBEDDED_CONFIG, SYSTEM_CONFIG

UNIT_NAME = "twindns.service"
NET_UNIT_NAME = "twindns-net.service"       # pulled in by UNIT_NAME (Requires=); never enabled itself
UNIT_NAMES = (UNIT_NAME, NET_UNIT_NAME)
UNIT_DIR = "etc/systemd/system"
USER = "twindns"
# The path the canonical unit names; replaced by where this installation lives.
CANONICAL_EXECUTABLE = "/usr/local/bin/twindns"
PATH_LINK = "usr/local/bin/twindns"
# What the unit's sandbox hides from the service (ProtectHome=yes, PrivateTmp=yes):
# an ExecStart below one of them fails 203/EXEC in a restart loop.
HIDDEN_FROM_SERVICE = ("/root", "/home", "/run/user", "/tmp", "/var/tmp")
SYSTEM_PREFIX = "/opt/twindns"
DOC_PATH = "usr/share/doc/twindns/config.md"


class InstallError(RuntimeError):
    """A step of install/uninstall could not be done."""


def packaged_unit(name: str = UNIT_NAME) -> str:
    """A unit file shipped in the package (a copy of systemd/NAME)."""
    return resources.files("supervisor").joinpath(name).read_text()


def twindns_command() -> str:
    """How systemd should start this installation of twindns."""
    script = Path(sys.executable).parent / "twindns"
    if script.is_file() and os.access(script, os.X_OK):
        return str(script)
    found = shutil.which("twindns")
    return found if found else f"{sys.executable} -m supervisor"


def hidden_from_service(command: str) -> str | None:
    """The sandboxed directory `command` lives under, or None when the unit can run it."""
    path = os.path.realpath(command.split()[0])
    for hidden in HIDDEN_FROM_SERVICE:
        if path == hidden or path.startswith(hidden + "/"):
            return hidden
    return None


def system_wide_command() -> str:
    """The one command that installs twindns where the service can run it."""
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "install.sh").is_file() and (checkout / "pyproject.toml").is_file():
        return f"sudo {checkout}/install.sh --service"
    return (f"sudo sh -c 'python3 -m venv {SYSTEM_PREFIX} && {SYSTEM_PREFIX}/bin/pip install {installed_from()} "
            f"&& {SYSTEM_PREFIX}/bin/twindns install --now'")


def installed_from() -> str:
    """What pip installed this twindns from (a wheel file or a directory), as pip records it."""
    try:
        from importlib.metadata import PackageNotFoundError, distribution
        url = json.loads(distribution("twindns").read_text("direct_url.json") or "{}").get("url", "")
    except (PackageNotFoundError, ValueError):
        url = ""
    return url.removeprefix("file://") if url.startswith("file://") else "twindns"


def unit_text(command: str, name: str = UNIT_NAME) -> str:
    """The packaged unit with its Exec*= lines pointing at `command`."""
    if any(c in command for c in "\"'\\\n%$"):
        raise InstallError(f"cannot put {command!r} into a unit file: quote characters or % in the path")
    return packaged_unit(name).replace(CANONICAL_EXECUTABLE + " ", command + " ")


def unit_command(text: str) -> str:
    """The executable an installed unit's ExecStart runs."""
    for line in text.splitlines():
        if line.startswith("ExecStart="):
            return line.split("=", 1)[1].split()[0]
    return ""


def systemd_is_running(root: Path) -> bool:
    """sd_booted(3): systemd manages this host, and DIR is this host."""
    return root == Path("/") and os.path.isdir("/run/systemd/system")


def under(root: Path, path: str) -> Path:
    return root / path.lstrip("/")


# -- steps -----------------------------------------------------------------------
def write_if_changed(path: Path, text: str, mode: int = 0o644) -> bool:
    """Atomically write `text` unless it is already there; True if written."""
    if path.is_file() and path.read_text() == text:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def user_exists(root: Path, name: str = USER) -> bool:
    if root == Path("/"):
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False
    passwd = root / "etc/passwd"
    return passwd.is_file() and any(line.split(":", 1)[0] == name
                                    for line in passwd.read_text().splitlines())


def ensure_user(root: Path) -> str:
    if user_exists(root):
        return f"user {USER}: exists"
    if root != Path("/") and not (root / "etc/passwd").is_file():
        return (f"user {USER}: skipped, {root}/etc/passwd does not exist "
                f"(create it in the image; otherwise `twindns run` creates the user, or uses a free dynamic uid)")
    argv = ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
            "--shell", "/usr/sbin/nologin", "--user-group", "--comment", "twindns DNS cache worker"]
    if root != Path("/"):
        argv += ["--root", str(root)]
    run(argv + [USER])
    return f"user {USER}: created"


def installed_config_text() -> str:
    """The defaults, under a header that is true for the file `install` writes."""
    body = "".join(line for line in Path(EMBEDDED_CONFIG).read_text().splitlines(keepends=True)
                   if not line.startswith("#"))
    return (f"# {SYSTEM_CONFIG}: written by `twindns install` with the defaults; `twindns run`\n"
            f"# reads it. Every key is optional; the values shown are the defaults.\n"
            f"# Every key explained: /{DOC_PATH}\n"
            "# After an edit: `twindns check-config`, then `twindns reload` (or systemctl reload twindns).\n"
            + body)


def ensure_config(root: Path) -> str:
    path = under(root, SYSTEM_CONFIG)
    if path.exists():
        return f"config {path}: kept as it is"
    write_if_changed(path, installed_config_text())
    return f"config {path}: written (the defaults; edit, then `twindns reload`)"


def ensure_docs(root: Path) -> str:
    path = under(root, DOC_PATH)
    changed = write_if_changed(path, resources.files("supervisor").joinpath("config.md").read_text())
    return f"config reference {path}: {'written' if changed else 'unchanged'}"


def run(argv: list[str]) -> None:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise InstallError(f"{argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{' '.join(argv)}: no answer in 120 s") from None
    if p.returncode != 0:
        raise InstallError(f"{' '.join(argv)} failed ({p.returncode}): {p.stderr.strip()}")


def systemctl(root: Path, *args: str) -> None:
    offline = [] if systemd_is_running(root) else ["--root", str(root)]
    run(["systemctl", *offline, *args])


# -- commands --------------------------------------------------------------------
def ensure_path_link(root: Path, command: str) -> str:
    """`twindns` on PATH: a link in /usr/local/bin to this installation, unless one is there."""
    link = under(root, PATH_LINK)
    script = command.split()[0]
    if " " in command or Path(script).name != "twindns":
        return f"PATH: {link} not made ({command} is not a twindns script)"
    if link.is_symlink() and os.readlink(link) == script:
        return f"PATH: {link} -> {script}"
    if link.exists() or link.is_symlink():
        return f"PATH: {link} exists and is left alone (the unit runs {script})"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(script)
    return f"PATH: {link} -> {script} (made)"


def install(root: Path, now: bool, say=print, command: str | None = None) -> None:
    command = command or twindns_command()
    hidden = hidden_from_service(command)
    if hidden is not None:
        problem = (f"{command} is under {hidden}, which the service cannot see "
                   f"(the unit sets ProtectHome=yes and PrivateTmp=yes)")
        if root == Path("/"):
            # Refused before anything changes: a unit that cannot exec loops in Restart=.
            raise InstallError(f"{problem}; nothing was changed. Install system-wide instead: "
                               f"{system_wide_command()}")
        # An image tree: where twindns lives inside it is the image builder's business.
        say(f"warning: {problem}; the unit in {root} starts only if twindns is at that path in the image "
            f"and outside those directories")
    for name in UNIT_NAMES:
        unit = under(root, UNIT_DIR) / name
        changed = write_if_changed(unit, unit_text(command, name))
        say(f"unit {unit}: {'written' if changed else 'unchanged'} "
            f"(ExecStart={command} {'run' if name == UNIT_NAME else 'net ensure'})")
    say(ensure_path_link(root, command))
    say(ensure_user(root))
    say(ensure_config(root))
    say(ensure_docs(root))
    live = systemd_is_running(root)
    if live:
        systemctl(root, "daemon-reload")
    systemctl(root, "enable", UNIT_NAME)
    say(f"enabled {UNIT_NAME}" + ("" if live else f" (offline, in {root})"))
    if live and now:
        systemctl(root, "start", UNIT_NAME)
        say(f"started {UNIT_NAME}")
    elif not live:
        say(_not_live(root, "daemon-reload" + (" and start" if now else "")))


def uninstall(root: Path, say=print) -> None:
    live = systemd_is_running(root)
    unit = under(root, UNIT_DIR) / UNIT_NAME
    if unit.exists():
        # stop first: the supervisor drains its workers and tears down on SIGTERM
        systemctl(root, "disable", *(["--now"] if live else []), UNIT_NAME)
        say(f"disabled {UNIT_NAME}" + (" and stopped it" if live else f" (offline, in {root})"))
        if live:
            # It stops on its own once unneeded, in a job of its own: wait for that teardown here,
            # so the one below is only the fallback.
            systemctl(root, "stop", NET_UNIT_NAME)
            say(f"stopped {NET_UNIT_NAME} (network state removed)")
    if root == Path("/"):
        say(teardown_network())
    else:
        say(f"network teardown: skipped, {root} is an image tree, not this host's network")
    link = under(root, PATH_LINK)
    if unit.exists() and link.is_symlink() and os.readlink(link) == unit_command(unit.read_text()):
        link.unlink()
        say(f"PATH: {link} removed")
    doc = under(root, DOC_PATH)
    if doc.exists():
        doc.unlink()
        say(f"config reference {doc}: removed")
    for name in UNIT_NAMES:
        path = under(root, UNIT_DIR) / name
        if path.exists():
            path.unlink()
            say(f"unit {path}: removed")
        else:
            say(f"unit {path}: not installed")
    if live:
        systemctl(root, "daemon-reload")
    else:
        say(_not_live(root, "stop and daemon-reload"))
    config = under(root, SYSTEM_CONFIG)
    if config.exists():
        say(f"kept {config} and user {USER}: remove them with `rm {config}` and `userdel {USER}`")


def teardown_network() -> str:
    """Remove our interface and rules even if the supervisor could not."""
    argv = [sys.executable, "-m", "supervisor", "net", "teardown"]
    if os.path.exists(SYSTEM_CONFIG):
        argv += ["--config", SYSTEM_CONFIG]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if p.returncode != 0:
        raise InstallError(f"network teardown failed: {(p.stderr or p.stdout).strip()}")
    return "network teardown: done"


def _not_live(root: Path, what: str) -> str:
    if root != Path("/"):
        return f"systemctl {what}: skipped, --root {root} is not the running system"
    comm = Path("/proc/1/comm").read_text().strip() if Path("/proc/1/comm").exists() else "?"
    return f"systemctl {what}: skipped, systemd is not running here (PID 1 is {comm})"


def main(args) -> int:
    root = Path(args.root).resolve()
    if not root.is_dir():
        print(f"twindns {args.command}: --root {args.root}: not a directory", file=sys.stderr)
        return 2
    try:
        if args.command == "install":
            install(root, args.now)
        else:
            uninstall(root)
    except (InstallError, OSError) as exc:
        print(f"twindns {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0
