"""twindns supervisor: owns the node's DNS state and runs two cache workers."""
from importlib import metadata


def _installed_version() -> str:
    try:
        return metadata.version("twindns")
    except metadata.PackageNotFoundError:
        return "0+unknown"


# Read once, at import: the version of the code this process runs. The files
# on disk may be a newer release already (that is what `twindns upgrade` is for).
_RUNNING_VERSION = _installed_version()


def version() -> str:
    return _RUNNING_VERSION
