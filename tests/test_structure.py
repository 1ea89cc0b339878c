"""Source structure rules: no function in the package over 60 lines; the launcher does not import the runner."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "scripts" / "virnucpro"
MAX_LINES = 60

#: Functions allowed over the limit, by (path under the package, name), each with its reason. A listed function
#: that is no longer too long fails the test (remove it).
KNOWN_OFFENDERS: set[tuple[str, str]] = set()


def long_functions() -> dict[tuple[str, str], int]:
    """Every function (methods and nested ones included) longer than MAX_LINES, def line to last line."""
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_LINES:
                    found[(path.relative_to(PACKAGE).as_posix(), node.name)] = lines
    return found


def test_no_function_over_60_lines():
    found = long_functions()
    new = {k: v for k, v in found.items() if k not in KNOWN_OFFENDERS}
    assert not new, f"functions over {MAX_LINES} lines: {new}"
    fixed = KNOWN_OFFENDERS - set(found)
    assert not fixed, f"no longer over {MAX_LINES} lines, remove from KNOWN_OFFENDERS: {sorted(fixed)}"


def _imported_modules(path: Path) -> set[str]:
    """Modules `path` imports anywhere (inside functions too), as dotted names."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_launcher_does_not_import_the_runner():
    imported = _imported_modules(PACKAGE / "pipeline" / "launcher.py")
    assert not {m for m in imported if m.startswith("virnucpro.pipeline.runner")}, imported
    assert "virnucpro.pipeline.preemption" in imported  # the walk does see the launcher's imports
