"""Digest of the library code a workflow script runs.

Snakemake notices a changed `script:` file but not a changed module the script imports. Passing
this digest as a rule param makes a change to any `cellseg` module that the script reaches
(directly or through other `cellseg` modules) re-run that rule and only the rules whose scripts
reach that module.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

PACKAGE = "cellseg"


def imported_modules(source_path: Path, package_dir: Path) -> set[str]:
    """Names of the `cellseg` modules `source_path` imports, followed transitively."""
    seen: set[str] = set()
    pending = set(_direct_imports(source_path.read_text(), package_dir))
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        pending |= _direct_imports(_module_path(name, package_dir).read_text(), package_dir)
    return seen


def code_digest(script_path: str | Path, package_dir: str | Path) -> str:
    """SHA-256 over the sources of every `cellseg` module the script reaches, sorted by name."""
    package_dir = Path(package_dir)
    digest = hashlib.sha256()
    for name in sorted(imported_modules(Path(script_path), package_dir)):
        digest.update(name.encode())
        digest.update(_module_path(name, package_dir).read_bytes())
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=None)
def _direct_imports(source: str, package_dir: Path) -> frozenset[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from cellseg.data import tiles` names a module; `from cellseg.data.tiles import f` too.
            candidates = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        names |= {c for c in candidates if _is_module(c, package_dir)}
    return frozenset(names)


def _is_module(name: str, package_dir: Path) -> bool:
    return (name == PACKAGE or name.startswith(PACKAGE + ".")) and _module_path(
        name, package_dir
    ).is_file()


def _module_path(name: str, package_dir: Path) -> Path:
    """A module's file, or a (sub)package's `__init__.py`."""
    folder = package_dir.joinpath(*name.split(".")[1:])
    return folder / "__init__.py" if folder.is_dir() else folder.with_suffix(".py")
