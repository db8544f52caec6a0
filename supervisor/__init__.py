"""twindns supervisor: owns the node's DNS state and runs two cache workers."""
from importlib import metadata


def version() -> str:
    try:
        return metadata.version("twindns")
    except metadata.PackageNotFoundError:
        return "0+unknown"
