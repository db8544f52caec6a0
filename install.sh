#!/bin/sh
# Install twindns from this checkout on a stock Debian/Ubuntu host.
#
#   sudo ./install.sh            # venv in /opt/twindns, `twindns` on PATH
#   sudo ./install.sh --service  # the same, then `twindns install --now` (systemd unit, started)
#
# Why a venv: Debian 12 and Ubuntu 24.04 refuse `pip install` into the system
# Python (PEP 668), and their python3-* packages are older than what twindns
# needs. Why --only-binary: every dependency ships wheels, so installing needs
# no C compiler (only twindns itself is built: its optional C accelerator of
# the miss path where gcc and Python headers are, pure Python otherwise).
# Why /opt: the systemd unit hides /root, /home (ProtectHome=yes) and /tmp
# (PrivateTmp=yes), so the service must run from a path outside them.
# TWINDNS_PREFIX and TWINDNS_BINDIR move the venv and the PATH link (tests do).
set -eu

prefix=${TWINDNS_PREFIX:-/opt/twindns}
bindir=${TWINDNS_BINDIR:-/usr/local/bin}
here=$(cd "$(dirname "$0")" && pwd)
service=no
for arg in "$@"; do
    case $arg in
        --service) service=yes ;;
        -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
        *) echo "install.sh: unknown option $arg (expected --service or --help)" >&2; exit 2 ;;
    esac
done
if [ "$(id -u)" != 0 ]; then
    echo "install.sh: run it as root (it writes $prefix and $bindir/twindns)" >&2
    exit 1
fi

# What twindns runs at run time: python3 with venv, the iptables tools
# (iptables-nft-restore / iptables-legacy-restore), ip, setpriv.
if command -v apt-get >/dev/null 2>&1; then
    missing=""
    for pkg in python3 python3-venv iptables iproute2 util-linux; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing="$missing $pkg"
    done
    if [ -n "$missing" ]; then
        echo "install.sh: apt-get install$missing"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
    fi
fi
if ! python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "install.sh: twindns needs Python 3.11 or later; this host has $(python3 -V 2>&1)" >&2
    exit 1
fi

python3 -m venv "$prefix"
"$prefix/bin/python" -m pip install --quiet --disable-pip-version-check --only-binary :all: "$here"
mkdir -p "$bindir"
ln -sfn "$prefix/bin/twindns" "$bindir/twindns"
echo "install.sh: twindns $("$prefix/bin/twindns" version) in $prefix, on PATH as $bindir/twindns"
if [ "$service" = yes ]; then
    exec "$prefix/bin/twindns" install --now
fi
echo "install.sh: run it in the foreground with \`twindns run\`, or as a service with \`twindns install --now\`"
