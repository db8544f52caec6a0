"""Environment references in a config file, so one file (one Kubernetes
ConfigMap) serves every node: `${NAME}` is replaced by the variable's value,
`${NAME:-default}` by the default when NAME is unset or empty, and `$${`
stands for a literal `${`. Lines whose first non-blank character is `#` are
left alone, so a commented-out reference to an unset variable is no error.

Both the supervisor (supervisor/config.py) and the worker's
`--check-config FILE` expand the file they read, with the same environment;
the supervisor hands its workers the expanded text. A value that would break
the TOML string it lands in (a quote, a backslash, a control character) is
refused rather than quoted, so what runs is exactly what the file says.
"""
from __future__ import annotations

import re
from typing import Mapping

_REF = re.compile(r"\$\$\{|\$\{([^}]*)\}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class EnvExpandError(ValueError):
    """A `${...}` reference is malformed, names an unset variable, or has an unsafe value."""


def _value(ref: str, env: Mapping[str, str], where: str) -> str:
    name, sep, default = ref.partition(":-")
    if not _NAME.match(name):
        raise EnvExpandError(f"{where}: ${{{ref}}}: expected ${{NAME}} or ${{NAME:-default}} "
                             "with NAME of letters, digits and _")
    value = env.get(name, "")
    if not value:
        if not sep:
            raise EnvExpandError(f"{where}: ${{{name}}}: environment variable {name} is not set "
                                 f"(set it, or write ${{{name}:-default}})")
        value = default
    if any(c in value for c in '"\\\'') or any(ord(c) < 0x20 or ord(c) == 0x7f for c in value):
        raise EnvExpandError(f"{where}: ${{{name}}} = {value!r}: expected a value without quotes, "
                             "backslashes or control characters")
    return value


def expand(text: str, env: Mapping[str, str], source: str) -> str:
    """`text` with every reference replaced (see module doc); errors name `source` and the line."""
    if "${" not in text:
        return text
    out = []
    for number, line in enumerate(text.splitlines(keepends=True), 1):
        if "${" not in line or line.lstrip().startswith("#"):
            out.append(line)
            continue
        where = f"{source}: line {number}"
        out.append(_REF.sub(lambda m: "${" if m.group(1) is None else _value(m.group(1), env, where), line))
    return "".join(out)
