"""`twindns status [--json] | restart | reload | upgrade`: talk to a running
supervisor over its control socket.

status exits 0 healthy (both workers ready, network state in place), 1
degraded, 2 down (no worker ready) or unreachable. restart / reload /
upgrade print progress and exit 0 when done, 1 with the error otherwise.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import time

EXIT_HEALTHY, EXIT_DEGRADED, EXIT_DOWN = 0, 1, 2
EXIT_FAILED = 1
STATUS_TIMEOUT = 5.0
MUTATION_TIMEOUT = 300.0


class SupervisorUnreachable(ConnectionError):
    """No supervisor answers on the control socket."""


def socket_path(args) -> str:
    if args.socket:
        return args.socket
    from supervisor.config import Config, ConfigError, load
    try:
        return load(args.config).control_socket
    except ConfigError as e:
        # A config being edited must not make a serving node look down: the
        # running supervisor keeps the config it accepted. Try the default.
        default = Config.__dataclass_fields__["control_socket"].default
        print(f"warning: {e}; trying the default control socket {default}", file=sys.stderr)
        return default


def request(path: str, op: str, timeout: float, on_progress=lambda text: None, **fields) -> dict:
    """Send one op; return the final reply (progress lines go to on_progress)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(json.dumps({"op": op, **fields}).encode() + b"\n")
        f = s.makefile("rb")
        for line in f:
            msg = json.loads(line)
            if "progress" in msg:
                on_progress(msg["progress"])
                continue
            return msg
        raise SupervisorUnreachable(f"{path}: the supervisor closed the connection without a reply")
    except (FileNotFoundError, ConnectionRefusedError) as e:
        raise SupervisorUnreachable(f"{path}: no supervisor is running ({e.strerror})") from None
    except PermissionError:
        raise SupervisorUnreachable(f"{path}: permission denied (the socket is for root and its group)") from None
    except (socket.timeout, OSError) as e:
        raise SupervisorUnreachable(f"{path}: {e}") from None
    finally:
        s.close()


def status_exit(status: dict) -> int:
    if status.get("healthy"):
        return EXIT_HEALTHY
    return EXIT_DEGRADED if status.get("ready_workers", 0) > 0 else EXIT_DOWN


def _duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _restarts(by_cause: dict) -> str:
    parts = [f"{cause} {n}" for cause, n in by_cause.items() if n]
    return ", ".join(parts) or "0"


def render(status: dict) -> str:
    sup = status["supervisor"]
    lines = [f"twindns {status['version']}  supervisor pid {sup['pid']}  up {_duration(sup['uptime'])}  "
             f"{status['state']}  {'healthy' if status['healthy'] else 'NOT healthy'}",
             f"config {sup['config']}", ""]
    head = ("slot", "pid", "state", "gen", "uptime", "restarts", "probe", "queries", "cache", "hit ratio")
    rows = [head]
    for w in status["workers"]:
        latency = w["last_probe_latency"]
        ratio = w["hit_ratio"]
        rows.append((w["slot"], str(w["pid"] or "-"), w["state"], str(w["generation"] or "-"),
                     _duration(w["uptime"]), _restarts(w["restarts_by_cause"]),
                     f"{latency * 1000:.1f}ms" if latency is not None else "-",
                     str(w["queries"]), str(w["cache_entries"]), f"{ratio:.1%}" if ratio is not None else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines += ["  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip() for r in rows]
    for w in status["workers"]:
        if w["given_up"]:
            lines.append(f"slot {w['slot']}: {w['given_up']}")
        elif w["respawn_in"] is not None:
            lines.append(f"slot {w['slot']}: crash loop, respawn in {w['respawn_in']:.1f}s")
        if w["replacing"]:
            lines.append(f"slot {w['slot']}: replacement pid {w['replacing']} starting")
    net = status["network"]
    lines.append("")
    if net["managed"]:
        rules = {True: "ok", False: "PROBLEMS", None: "not managed"}[net["rules_ok"]]
        lines.append(f"network: interface {net['interface'] or '(not managed)'}  addresses "
                     f"{', '.join(net['addresses'])}  port {net['port']}  backend {net['backend'] or '-'}  "
                     f"rules {rules}" + (f" (checked {net['checked_ago']:g}s ago)"
                                         if net.get("checked_ago") is not None else ""))
        repair = net["last_repair"]
        lines.append("last repair: " + (f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(repair['at']))} "
                                        f"({'; '.join(repair['changes'])})" if repair else "never"))
        lines += [f"problem: {p}" for p in net["problems"]]
    else:
        lines.append(f"network: not managed (addresses {', '.join(net['addresses'])} port {net['port']})")
    lines += _config_lines(status.get("config") or {})
    return "\n".join(lines)


def _config_lines(cfg: dict) -> list[str]:
    if not cfg:
        return []
    lines = [f"config: {cfg['running']}" + (f" (the last accepted copy of {cfg['file']}, accepted "
                                            f"{cfg.get('accepted_at') or '?'})" if cfg["running_last_accepted"] else "")]
    if cfg["file_valid"] is False:
        lines.append(f"problem: config file {cfg['file']} is INVALID: {cfg['file_error']}")
    elif cfg["file_differs"]:
        lines.append(f"note: config file {cfg['file']} differs from what runs (`twindns reload` applies it)")
    return lines


def main(args) -> int:
    op = args.command
    try:
        path = socket_path(args)
        if op == "status":
            reply = request(path, "status", STATUS_TIMEOUT)
        else:
            # reload --config F moves the supervisor onto F (without it: re-read its own file)
            fields = {"config": os.path.abspath(args.config)} if op == "reload" and args.config else {}
            reply = request(path, op, MUTATION_TIMEOUT, lambda text: print(text, flush=True), **fields)
    except SupervisorUnreachable as e:
        if op == "status" and getattr(args, "json", False):
            print(json.dumps({"healthy": False, "error": str(e)}))
        print(f"twindns {op}: {e}", file=sys.stderr)
        return EXIT_DOWN if op == "status" else EXIT_FAILED
    if not reply.get("ok"):
        print(f"twindns {op}: {reply.get('error', 'failed')}", file=sys.stderr)
        return EXIT_DOWN if op == "status" else EXIT_FAILED
    if op == "status":
        reply.pop("ok")
        print(json.dumps(reply, indent=2) if args.json else render(reply))
        return status_exit(reply)
    print(f"{op}: done")
    return 0
