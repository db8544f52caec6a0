"""The twindns container image (deploy/build-image.sh) and pods of it run with
podman inside a test's network namespace, with host networking there as a
Kubernetes node's hostNetwork pod has, the DaemonSet's capabilities, mounts
and pid namespace (the node's).

    tag = image()                             # built once per source tree (cached)
    with Pod(netns, tag, tmp_path, "old") as pod:
        pod.wait_log("supervisor_ready")

The image root (debootstrap) is cached by build-image.sh under
/var/cache/twindns-ci/; the image itself is tagged with a hash of the
sources that go into it, so an unchanged tree reuses it.

podman runs with runc and cgroupfs: this machine's cgroup hierarchy is hybrid
(v1 controllers plus an empty v2), which crun refuses, and its hard
RLIMIT_NOFILE/NPROC are below podman's defaults, so the limits are given.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

from helpers.systemd_container import apt_mirror

REPO = Path(__file__).resolve().parents[2]
SOURCES = ("supervisor", "worker", "netsetup", "contract", "deploy/build-image.sh", "deploy/entrypoint.sh", "pyproject.toml")
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]
CAPS = "NET_ADMIN,NET_RAW,NET_BIND_SERVICE,SETUID,SETGID,KILL"     # deploy/kubernetes/daemonset.yaml
BUILD_TIMEOUT = 1800


class ImageError(RuntimeError):
    """The image could not be built, or a pod of it did not do what was asked."""


def source_hash() -> str:
    h = hashlib.sha256()
    for top in SOURCES:
        p = REPO / top
        for f in sorted([p] if p.is_file() else p.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def image() -> tuple[str, str]:
    """(tag, build output): the image of this source tree, built if not there yet."""
    tag = f"localhost/twindns:ci-{source_hash()}"
    if subprocess.run(["podman", "image", "exists", tag]).returncode == 0:
        return tag, "cached"
    p = subprocess.run(["bash", str(REPO / "deploy/build-image.sh"), "--tag", tag, "--mirror", apt_mirror()],
                       capture_output=True, text=True, timeout=BUILD_TIMEOUT, env={
                           "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                           "PYTHON": sys.executable})
    if p.returncode != 0:
        raise ImageError(f"build-image.sh failed ({p.returncode}):\n{(p.stdout + p.stderr)[-3000:]}")
    # earlier trees' images: one is enough on a CI machine
    old = subprocess.run(["podman", "images", "--format", "{{.Repository}}:{{.Tag}}", "localhost/twindns"],
                         capture_output=True, text=True).stdout.split()
    for other in old:
        if other.startswith("localhost/twindns:ci-") and other != tag:
            subprocess.run(["podman", "rmi", "-f", other], capture_output=True)
    return tag, p.stdout


class Pod:
    """One container of the image, as the DaemonSet's pod runs it, in `netns`."""

    def __init__(self, netns, tag: str, node: Path, name: str, env: dict | None = None, start: bool = True) -> None:
        self.netns, self.name = netns, f"twindns-{netns.name}-{name}"
        # read straight from the file: a `podman logs` per poll costs CPU the load test needs
        self.log_path = node / f"{name}.log"
        for d in ("config", "run", "state"):
            (node / d).mkdir(exist_ok=True)
        argv = [*PODMAN, "create", "--name", self.name, "--network", f"ns:/run/netns/{netns.name}",
                "--pid=host", "--ulimit", "nofile=8192:8192", "--ulimit", "nproc=4096:4096",
                "--cap-drop=all", f"--cap-add={CAPS}", "--security-opt", "no-new-privileges",
                "--read-only", "--tmpfs", "/tmp", "--stop-timeout", "30",
                "--log-driver", "k8s-file", "--log-opt", f"path={self.log_path}",
                "-v", f"{node / 'config'}:/etc/twindns:ro", "-v", f"{node / 'run'}:/run/twindns",
                "-v", f"{node / 'state'}:/var/lib/twindns"]
        for k, v in (env or {}).items():
            argv += ["-e", f"{k}={v}"]
        p = subprocess.run([*argv, tag, "--config", "/etc/twindns/twindns.toml"],
                           capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise ImageError(f"podman create failed: {p.stderr.strip()}")
        if start:
            self.start()

    def start(self) -> None:
        """Start the created container (kubelet's step after the image is there and the pod admitted)."""
        p = subprocess.run([*PODMAN, "start", self.name], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise ImageError(f"podman start failed: {p.stderr.strip()}")

    def logs(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def running(self) -> bool:
        p = subprocess.run(["podman", "inspect", "--format", "{{.State.Running}}", self.name],
                           capture_output=True, text=True, timeout=60)
        return p.stdout.strip() == "true"

    def wait_log(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        checked = time.monotonic()
        while time.monotonic() < deadline:
            out = self.logs()
            if text in out:
                return out
            if time.monotonic() > checked + 5:
                checked = time.monotonic()
                if not self.running():
                    raise ImageError(f"{self.name} exited before logging {text!r}:\n{out[-3000:]}")
            time.sleep(0.2)
        raise ImageError(f"{self.name}: no {text!r} within {timeout:g} s:\n{self.logs()[-3000:]}")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, as kubelet deletes a pod; the container's exit code."""
        subprocess.run(["podman", "stop", "-t", str(int(timeout)), self.name], capture_output=True,
                       timeout=timeout + 30)
        p = subprocess.run(["podman", "inspect", "--format", "{{.State.ExitCode}}", self.name],
                           capture_output=True, text=True, timeout=60)
        return int(p.stdout.strip() or -1)

    def remove(self) -> None:
        subprocess.run(["podman", "rm", "-f", "-t", "5", self.name], capture_output=True, timeout=120)

    def __enter__(self) -> "Pod":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()
