"""The one thing pyproject.toml cannot say: the optional C accelerator of
the miss path (worker/_fastwire.c). optional=True: without a C compiler or
Python headers the build goes on and twindns runs on the pure-Python
reference (worker/wire.py, worker/response.py), only slower on misses.
The source's SHA-256 is compiled in, so an edited checkout whose extension
was not rebuilt uses the Python code instead of a stale extension
(worker/accel.py)."""
import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "worker/_fastwire.c"
digest = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension(
    "worker._fastwire", [SOURCE], optional=True,
    define_macros=[("SOURCE_SHA256", f'"{digest}"')],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Wno-unused-parameter",
                        "-Wno-missing-field-initializers", "-Wno-cast-function-type"])])
