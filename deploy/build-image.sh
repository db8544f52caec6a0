#!/usr/bin/env bash
# Build the twindns container image with Debian's own tools, no image registry:
# a debootstrap'ed bookworm root (cached), the project installed into
# /opt/twindns from wheels (as install.sh does), `twindns run` as the entry point.
#
#   deploy/build-image.sh [--tag twindns:VERSION] [--mirror URL] [--root DIR]
#
# Needs root, debootstrap and buildah. The image lands in the local container
# storage (podman/buildah); `podman save` or `buildah push` takes it elsewhere.
# --root DIR: use this bookworm root instead of making one (it is copied, never changed).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
python=${PYTHON:-python3}
version=$("$python" -c 'import tomllib,sys; print(tomllib.load(open(sys.argv[1],"rb"))["project"]["version"])' \
    "$repo/pyproject.toml")
tag="twindns:$version"
mirror=${TWINDNS_MIRROR:-http://deb.debian.org/debian}
cache=${TWINDNS_CI_CACHE:-/var/cache/twindns-ci}
root=""
while [ $# -gt 0 ]; do
    case $1 in
        --tag) tag=$2; shift 2 ;;
        --mirror) mirror=$2; shift 2 ;;
        --root) root=$2; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) echo "build-image.sh: unknown option $1 (expected --tag, --mirror, --root or --help)" >&2; exit 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "build-image.sh: run it as root (debootstrap and buildah mount need it)" >&2; exit 1; }
for tool in buildah debootstrap; do
    command -v $tool >/dev/null || { echo "build-image.sh: $tool is missing (apt-get install $tool)" >&2; exit 1; }
done

# What runs in the image: Python, the firewall tools netsetup drives, iproute2 for
# `kubectl exec ... ip addr`. No compiler: every dependency comes as a wheel, and
# twindns's own wheel is built here, with its C accelerator where this host has gcc.
packages=python3,python3-venv,iptables,nftables,iproute2
if [ -z "$root" ]; then
    key=$(printf '%s' "bookworm $packages" | sha256sum | cut -c1-12)
    root=$cache/image-bookworm-$key
    mkdir -p "$cache"
    exec 9>"$cache/.image.lock"
    flock 9                                  # concurrent builds: one debootstraps, the others wait
    if [ ! -x "$root/usr/bin/python3" ]; then
        rm -rf "$root.partial"
        echo "build-image.sh: debootstrap bookworm into $root (once; cached)"
        debootstrap --variant=minbase --include=$packages bookworm "$root.partial" "$mirror" >/dev/null
        mv "$root.partial" "$root"
    fi
    flock -u 9
fi

work=$(mktemp -d)
ctr=""
cleanup() {
    [ -n "$ctr" ] && buildah rm "$ctr" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

echo "build-image.sh: wheels of $repo"
"$python" -m pip wheel --quiet --disable-pip-version-check --only-binary :all: --wheel-dir "$work/wheels" "$repo"

ctr=$(buildah from scratch)
mnt=$(buildah mount "$ctr")
# The cached root is never changed: copy it, leaving out what an image does not need.
tar -C "$root" --exclude=./var/cache/apt --exclude=./var/lib/apt/lists --exclude=./usr/share/doc \
    --exclude=./usr/share/man --exclude=./usr/share/info --exclude=./usr/share/locale \
    --exclude=./var/log --exclude=./debootstrap -cf - . | tar -C "$mnt" -xf -
mkdir -p "$mnt/var/cache/apt" "$mnt/var/lib/apt/lists/partial" "$mnt/var/log" "$mnt/tmp/wheels"
cp "$work"/wheels/*.whl "$mnt/tmp/wheels/"
chroot "$mnt" /bin/sh -euc '
    python3 -m venv /opt/twindns
    /opt/twindns/bin/pip install --quiet --no-index --no-cache-dir --disable-pip-version-check \
        --find-links /tmp/wheels twindns
    ln -sfn /opt/twindns/bin/twindns /usr/local/bin/twindns
    getent passwd twindns >/dev/null || useradd --system --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin twindns
    mkdir -p /etc/twindns /run/twindns /var/lib/twindns
    rm -rf /tmp/wheels /root/.cache
'
install -m 0755 "$here/entrypoint.sh" "$mnt/usr/local/bin/twindns-entrypoint"
buildah umount "$ctr" >/dev/null
buildah config --entrypoint '["/usr/local/bin/twindns-entrypoint"]' \
    --cmd '["--config", "/etc/twindns/twindns.toml"]' \
    --env PATH=/opt/twindns/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --label org.opencontainers.image.title=twindns --label org.opencontainers.image.version="$version" \
    --stop-signal SIGTERM "$ctr"
buildah commit --quiet --rm "$ctr" "$tag" >/dev/null
ctr=""
size=$(buildah inspect --type image --format '{{.Docker.Size}}' "$tag" 2>/dev/null || true)
if [ -z "$size" ] || [ "$size" = 0 ]; then
    size=$(podman image inspect --format '{{.Size}}' "$tag")
fi
echo "build-image.sh: built $tag, $((size / 1024 / 1024)) MiB ($size bytes)"
