"""Size limits of the project's style rules: no module over 400 lines, no
class over 250. Prints every offender and exits 1 if there is one.

    python tools/check_sizes.py [PACKAGE_DIR ...]   (default: supervisor worker netsetup contract)
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_CLASS_LINES = 250
PACKAGES = ("supervisor", "worker", "netsetup", "contract")


def offenders(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    found = []
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            text = path.read_text()
            lines = len(text.splitlines())
            rel = path.relative_to(root)
            if lines > MAX_MODULE_LINES:
                found.append(f"{rel}: {lines} lines (module limit {MAX_MODULE_LINES})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef):
                    size = node.end_lineno - node.lineno + 1
                    if size > MAX_CLASS_LINES:
                        found.append(f"{rel}:{node.lineno}: class {node.name}: {size} lines "
                                     f"(class limit {MAX_CLASS_LINES})")
    return found


def main(argv: list[str]) -> int:
    root = Path(__file__).resolve().parents[1]
    found = offenders(root, tuple(argv) or PACKAGES)
    for line in found:
        print(line)
    print(f"{len(found)} over the limits" if found else "every module <= 400 lines, every class <= 250")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
