"""Running a child process with a deadline from the supervisor's event loop:
its output, or ChildTimeout once it has been killed and reaped. A child is
never left running behind us, also when the awaiting task is cancelled (a
netsetup child left alone could re-add rules after teardown)."""
from __future__ import annotations

import asyncio
import subprocess
from dataclasses import dataclass


class ChildTimeout(TimeoutError):
    """The child did not finish within its deadline (it has been killed)."""


@dataclass(frozen=True)
class Finished:
    returncode: int
    stdout: bytes
    stderr: bytes

    def last_error_line(self) -> str:
        """The last line the child wrote to stderr, or "" (a Python traceback ends with the error)."""
        lines = self.stderr.decode(errors="replace").strip().splitlines()
        return lines[-1] if lines else ""


async def run(argv: list[str], timeout: float, *, input: bytes | None = None,
              env: dict[str, str] | None = None, cwd: str | None = None) -> Finished:
    """Run argv (stdin `input`, or /dev/null), capturing stdout and stderr."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(input), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise ChildTimeout(f"{argv[0]} did not finish in {timeout:g} s") from None
    except asyncio.CancelledError:
        if proc.returncode is None:
            try:
                proc.kill()
            except ProcessLookupError:
                pass
            await asyncio.shield(proc.wait())
        raise
    return Finished(proc.returncode, out, err)


def run_sync(argv: list[str], timeout: float, *, input: bytes | None = None,
             env: dict[str, str] | None = None, cwd: str | None = None) -> Finished:
    """run() for a caller without an event loop (a command-line tool, a start-up check)."""
    try:
        p = subprocess.run(argv, input=input, stdin=subprocess.DEVNULL if input is None else None,
                           capture_output=True, timeout=timeout, env=env, cwd=cwd)
    except subprocess.TimeoutExpired:       # killed and reaped by subprocess.run
        raise ChildTimeout(f"{argv[0]} did not finish in {timeout:g} s") from None
    return Finished(p.returncode, p.stdout, p.stderr)
