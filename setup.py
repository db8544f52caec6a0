"""The one thing pyproject.toml cannot say: the optional C extensions, the
accelerator of the miss path (worker/_fastwire.c) and the pair's claim
table (worker/_claims.c). optional=True: without a C compiler or Python
headers the build goes on and twindns runs on the pure-Python reference
(worker/wire.py, response.py, upstream_query.py, answer.py, cache.py), only
slower on misses, and the pair splits misses by the crc32 rule alone
(worker/claims.py).
The source's SHA-256 is compiled in, so an edited checkout whose extension
was not rebuilt uses the Python code instead of a stale extension
(worker/accel.py)."""
import hashlib
import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExtNewFile(build_ext):
    """An in-place build (`pip install -e .`) writes the extension as a new
    file: copied into the old one, it would change the code under every
    running worker that has it mapped, and they crash (SIGSEGV, seen in
    tests/integration/test_ops_upgrade.py before this). pip's own installs
    already write new files."""

    def copy_file(self, infile, outfile, *args, **kwargs):
        if os.path.isfile(outfile):
            os.unlink(outfile)
        return super().copy_file(infile, outfile, *args, **kwargs)


FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
         "-Wno-missing-field-initializers", "-Wno-cast-function-type"]


def extension(name: str) -> Extension:
    source = f"worker/{name}.c"
    digest = hashlib.sha256((Path(__file__).parent / source).read_bytes()).hexdigest()
    return Extension(f"worker.{name}", [source], optional=True,
                     define_macros=[("SOURCE_SHA256", f'"{digest}"')], extra_compile_args=FLAGS)


setup(cmdclass={"build_ext": BuildExtNewFile}, ext_modules=[extension("_fastwire"), extension("_claims")])
