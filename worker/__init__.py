"""twindns cache worker: serves DNS from a cache, forwards misses upstream."""
from importlib import metadata


def version() -> str:
    try:
        return metadata.version("twindns")
    except metadata.PackageNotFoundError:
        return "0+unknown"
