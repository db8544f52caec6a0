"""The `twindns` command: parses arguments and hands each subcommand to the
module that owns it. Imports are lazy so `twindns status` stays quick."""
from __future__ import annotations

import argparse
import sys

DEFAULT_CONFIG = "/etc/twindns/twindns.toml"


class _VersionAction(argparse.Action):
    """`twindns --version`, as `twindns version`; the version is looked up only when asked."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from supervisor import version
        print(version())
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twindns", description="node-local DNS cache that never stops answering")
    p.add_argument("--version", action=_VersionAction, help="print the version and exit")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name: str, help_: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help_)
        sp.add_argument("--config", default=None,
                        help=f"config file (default {DEFAULT_CONFIG}; embedded defaults when absent)")
        sp.add_argument("--socket", default=None, help="control socket path (overrides the config)")
        return sp

    run = cmd("run", "run the supervisor in the foreground (systemd ExecStart)")
    run.add_argument("--state-dir", default=None,
                     help="where the last accepted config is kept (default $TWINDNS_STATE_DIR or /var/lib/twindns)")
    run.add_argument("--takeover", action="store_true",
                     help="replace the supervisor that runs: start beside it, then have it step down")
    run.add_argument("--keep-network", action="store_true",
                     help="leave the interface and rules in place on exit (twindns-net.service owns them)")
    st = cmd("status", "show supervisor, workers and network state")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    cmd("restart", "rolling restart of both workers, one at a time")
    cmd("reload", "re-read the config; rolling restart onto it if valid")
    cmd("upgrade", "re-exec the supervisor on the code on disk, then rolling restart")
    cc = cmd("check-config", "validate a config file")
    cc.add_argument("file", nargs="?", default=None)
    net = cmd("net", "inspect or change the node's network state directly")
    net.add_argument("action", choices=["ensure", "verify", "teardown", "release"],
                     help="release: teardown unless interface.teardown = false (twindns-net.service's ExecStop)")
    ins = cmd("install", "install the systemd unit, user and default config")
    ins.add_argument("--root", default="/", help="install below this directory (skips systemctl unless /)")
    ins.add_argument("--now", action="store_true", help="also start the service")
    un = cmd("uninstall", "stop and remove the service, tear down network state")
    un.add_argument("--root", default="/")
    ic = sub.add_parser("import-corefile", help="translate a node-local-dns Corefile into a twindns.toml")
    ic.add_argument("corefile", metavar="FILE")
    ic.add_argument("-o", "--output", default=None, help="write the config here (default: stdout)")
    cmd("version", "print the version")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    c = args.command
    if c == "version":
        from supervisor import version
        print(version())
        return 0
    if c == "run":
        from supervisor.arbiter import run_main
        return run_main(args)
    if c in ("status", "restart", "reload", "upgrade"):
        from supervisor import client
        return client.main(args)
    if c == "check-config":
        from supervisor.config import check_config_main
        return check_config_main(args)
    if c == "net":
        from supervisor.netcmd import main as net_main
        return net_main(args)
    if c == "import-corefile":
        from supervisor import corefile
        return corefile.main(args)
    if c in ("install", "uninstall"):
        from supervisor import install
        return install.main(args)
    raise AssertionError(c)


if __name__ == "__main__":
    sys.exit(main())
