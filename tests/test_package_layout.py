"""The package's imports run one way: from a stage down to the stages before it and to the
shared foundations (docs/design.md, "Package layout"), never back up and never in a circle."""

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "cellseg"

# Lowest first: a module may import its own subpackage and the subpackages listed before it.
STAGES = ["common", "data", "model", "inference", "scoring", "training", "outputs", "workflow"]
# Command-line entry points outside the stages, above all of them.
ENTRY_POINTS = {"cellseg.segment_exported"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    folder = PACKAGE.parent.joinpath(*name.split("."))
    return folder.with_suffix(".py").is_file() or (folder / "__init__.py").is_file()


def cellseg_imports(path: Path) -> set[str]:
    """The `cellseg` modules a file imports, anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found |= {name for name in names if name.startswith("cellseg.") and is_module(name)}
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(path): cellseg_imports(path) for path in PACKAGE.rglob("*.py")}


def stage(module: str) -> str:
    return module.split(".")[1]


def test_every_module_belongs_to_a_stage():
    loose = [m for m in import_graph() if m != "cellseg" and m not in ENTRY_POINTS and stage(m) not in STAGES]
    assert loose == [], "modules outside the stage subpackages (add them to one, or to STAGES)"


def test_no_module_imports_a_later_stage():
    backward = [
        f"{module} -> {target}"
        for module, targets in import_graph().items()
        for target in targets
        if module != "cellseg" and module not in ENTRY_POINTS and STAGES.index(stage(target)) > STAGES.index(stage(module))
    ]
    assert backward == []


def test_no_import_circle():
    graph = import_graph()
    state: dict[str, str] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                pytest.fail("import circle: " + " -> ".join(path[path.index(target) :] + [target]))
            if target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_walker_sees_a_circle_and_a_backward_import(tmp_path, monkeypatch):
    """The checks above would pass on a walker that finds nothing: feed it a known bad package."""
    package = tmp_path / "cellseg"
    for sub, source in {
        "common/a.py": "from cellseg.common.b import f\n",
        "common/b.py": "def f():\n    from cellseg.common.a import g\n",
        "data/c.py": "from cellseg.model.d import h\n",
        "model/d.py": "",
    }.items():
        (package / sub).parent.mkdir(parents=True, exist_ok=True)
        (package / sub).write_text(source)
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    with pytest.raises(pytest.fail.Exception, match="common.a -> cellseg.common.b -> cellseg.common.a"):
        test_no_import_circle()
    with pytest.raises(AssertionError, match="data.c -> cellseg.model.d"):
        test_no_module_imports_a_later_stage()


def test_building_the_dag_imports_no_torch():
    """Snakefile and rules import only torch-free modules: Snakemake parses them at every start,
    also inside each cluster job, and torch with torchvision takes seconds to import."""
    repo = PACKAGE.parents[1]
    workflow = [repo / "Snakefile", *sorted((repo / "workflow" / "rules").glob("*.smk"))]
    imported = r"^\s*from (cellseg[\w.]*) import"
    modules = sorted({m for path in workflow for m in re.findall(imported, path.read_text(), re.M)})
    assert "cellseg.workflow.configuration" in modules  # the pattern finds the rules' imports
    code = (f"import sys\nfor m in {modules!r}: __import__(m)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "[]", f"importing {modules} imports {proc.stdout.strip()[:300]}"
