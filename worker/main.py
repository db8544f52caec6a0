"""`python -m worker`: the command line (docs/internals.md, "Worker command
line"). Standalone mode binds its own sockets, supervised mode receives them
as inherited fds; both then hand over to service.Service."""
from __future__ import annotations

import argparse
import ctypes
import gc
import logging
import os
import resource
import socket
import sys
from dataclasses import replace

import uvloop

from contract.exits import EX_BOOT
from worker import logfmt, version, wire
from worker.config import EX_CONFIG, ConfigError, WorkerConfig, check_config_main, \
    default_config, load_bytes, load_file, parse_server
from worker.tcp_server import TcpLimits
from worker.service import Identity, Options, Service, Sockets

PR_SET_DUMPABLE = 4
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)   # Linux; Python 3.11 lacks the name
UDP_RCVBUF = 4 * 1024 * 1024
TCP_BACKLOG = 1024


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m worker", description="twindns cache worker")
    p.add_argument("--listen", action="append", default=[], metavar="IP:PORT",
                   help="serve UDP and TCP here (standalone); our own address for --check-config")
    p.add_argument("--upstream", action="append", default=[], metavar="IP[:PORT]",
                   help="replaces the servers of upstream zone '.'")
    p.add_argument("--force-tcp", action="store_true", help="zone '.' upstream queries over TCP")
    p.add_argument("--config", metavar="FILE", help="twindns TOML file (its worker sections)")
    p.add_argument("--check-config", metavar="FILE", help="validate FILE and exit (0 ok, 78 invalid)")
    p.add_argument("--no-metrics", action="store_true", help="do not count per query (to measure their cost)")
    p.add_argument("--tcp-idle-timeout", type=float, default=TcpLimits.idle_timeout, metavar="SECONDS")
    p.add_argument("--tcp-max-connections", type=int, default=TcpLimits.max_connections, metavar="N")
    p.add_argument("--tcp-query-timeout", type=float, default=TcpLimits.query_timeout, metavar="SECONDS",
                   help="a query must arrive whole within this long of its first byte")
    sup = p.add_argument_group("supervised mode (spawned by the supervisor)")
    sup.add_argument("--supervised", action="store_true")
    sup.add_argument("--config-fd", type=int, metavar="FD")
    sup.add_argument("--udp-fd", type=int, action="append", default=[], metavar="FD")
    sup.add_argument("--tcp-fd", type=int, action="append", default=[], metavar="FD")
    sup.add_argument("--adopt-udp-fd", type=int, action="append", default=[], metavar="FD")
    sup.add_argument("--shared-udp-fd", type=int, action="append", default=[], metavar="FD",
                     help="a socket the supervisor holds for the service's lifetime: served, never steered")
    sup.add_argument("--shared-tcp-fd", type=int, action="append", default=[], metavar="FD")
    sup.add_argument("--control-fd", type=int, metavar="FD")
    sup.add_argument("--probe-fd", type=int, metavar="FD")
    sup.add_argument("--cache-fd", type=int, metavar="FD",
                     help="a cache the previous supervisor's workers left (a `systemctl restart`): "
                          "loaded before the sockets are read")
    sup.add_argument("--slot", default="-")
    sup.add_argument("--generation", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _not_dumpable()
    logfmt.setup(sys.stderr)
    if args.check_config:
        return check_config_main(args.check_config, args.listen)
    if args.supervised:
        missing = [f"--{n}" for n in ("config-fd", "control-fd", "probe-fd")
                   if getattr(args, n.replace("-", "_")) is None]
        if missing or not (args.udp_fd or args.tcp_fd):
            parser.error(f"--supervised needs {', '.join(missing) or '--udp-fd/--tcp-fd'}")
    elif not args.listen:
        parser.error("--listen IP:PORT is required (or --supervised)")
    try:
        config = _config(args)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return EX_CONFIG
    try:
        sockets = _inherited(args) if args.supervised else _bind(args.listen)
    except (OSError, ValueError) as e:
        print(f"cannot start serving: {e}", file=sys.stderr)
        return EX_BOOT
    _raise_fd_limit()
    tune_gc()
    logging.getLogger(__name__).info("miss path: %s", wire.MISS_PATH)
    identity = Identity(args.slot, args.generation, version())
    options = Options(per_query_stats=not args.no_metrics, cache_fd=args.cache_fd,
                      tcp=TcpLimits(idle_timeout=args.tcp_idle_timeout,
                                    max_connections=args.tcp_max_connections,
                                    query_timeout=args.tcp_query_timeout))
    return uvloop.run(Service(config, sockets, identity, options).run())


# Allocations of container objects between young-generation collections
# (CPython's default: 700). A miss allocates ~30 (records, closures, its
# race): at 700 the collector ran every ~25 misses and, with the cache's
# entries promoted, took 4-6 us per miss (bench/micro_miss.py); at 10,000
# 2-3 us, and 1.5% fewer instructions per miss (bench/miss_instructions.py).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Before serving: what is loaded by now (modules, dnspython's tables,
    the config) lives as long as the process, so gc.freeze() keeps every
    later collection from walking it; young collections run less often.
    Cycles are still collected: the miss path avoids making them (see
    upstream._Race._end), this is for the ones a bug or a library makes."""
    gc.collect()
    gc.freeze()
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def _config(args) -> WorkerConfig:
    roots = args.upstream or None
    if args.supervised:
        with os.fdopen(args.config_fd, "rb") as pipe:
            data = pipe.read()
        config = load_bytes(data, "config (from the supervisor)", args.listen, root_servers=roots)
    elif args.config:
        config = load_file(args.config, args.listen, root_servers=roots)
    else:
        config = default_config(args.listen, root_servers=roots)
    if args.force_tcp:
        config = replace(config, upstreams=tuple(replace(z, force_tcp=True) if z.zone == "." else z
                                                 for z in config.upstreams))
    return config


def _not_dumpable() -> None:
    """Other processes of our uid (`nobody` is shared) may then neither
    ptrace us nor read /proc/PID/mem or environ, and a crash leaves no core
    with cached answers: the kernel makes /proc/PID/* root's. The uid change
    before exec does not do it: exec of a plain binary makes us dumpable again."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_DUMPABLE, 0): {os.strerror(err)}")


def _raise_fd_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard one (no privilege needed): every
    upstream miss in flight holds a socket, and the Forwarder sizes its
    socket budget from this limit; the common soft default of 1024 would
    queue a burst of misses that the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _bind(listen: list[str]) -> Sockets:
    """Standalone: our own SO_REUSEPORT sockets, as the supervisor would make them."""
    udp, tcp = [], []
    for text in listen:
        ip, port = parse_server(text)
        family = socket.AF_INET6 if ":" in ip else socket.AF_INET
        for kind, out in ((socket.SOCK_DGRAM, udp), (socket.SOCK_STREAM, tcp)):
            sock = socket.socket(family, kind)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if kind == socket.SOCK_DGRAM:
                _receive_buffer(sock)
            try:
                sock.bind((ip, port))
            except OSError as e:
                raise OSError(e.errno, f"cannot bind {text}: {e.strerror}") from e
            if kind == socket.SOCK_STREAM:
                sock.listen(TCP_BACKLOG)
            sock.setblocking(False)
            out.append(sock)
    return Sockets(udp, tcp)


def _receive_buffer(sock: socket.socket) -> None:
    """4 MiB so bursts queue instead of dropping; past rmem_max only as root."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, UDP_RCVBUF)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RCVBUF)


def _inherited(args) -> Sockets:
    """Supervised: the sockets arrive as fds; the worker never binds."""
    def adopt(fd: int) -> socket.socket:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        return sock
    return Sockets(udp=[adopt(fd) for fd in args.udp_fd], tcp=[adopt(fd) for fd in args.tcp_fd],
                   adopt_udp=[adopt(fd) for fd in args.adopt_udp_fd],
                   shared_udp=[adopt(fd) for fd in args.shared_udp_fd],
                   shared_tcp=[adopt(fd) for fd in args.shared_tcp_fd],
                   probe=adopt(args.probe_fd), control=adopt(args.control_fd))
