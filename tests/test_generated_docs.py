"""The generated pages of docs/ cannot go stale, and the workflow keeps Snakemake's conventions.

- docs/config.md equals what `cellseg.workflow.generated_docs.config_reference` writes today (`make docs`
  regenerates it), and documents every key of the schema (config.yaml: tests/test_config_files.py);
- docs/rulegraph.dot equals today's `snakemake --rulegraph` (edges sorted), and
  docs/rulegraph.svg shows the same rules and edges (checked without Graphviz; rendered again
  where `dot` is installed);
- docs/design.md names every module of src/cellseg;
- the Snakefile and workflow/rules/*.smk pass `snakefmt --check` (`snakemake --lint`:
  tests/test_workflow.py::test_lint_reports_nothing);
- .snakemake-workflow-catalog.yml uses only the catalog's documented keys.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cellseg.workflow.configuration import schema_keys
from cellseg.workflow.generated_docs import (
    config_reference,
    describe_type,
    normalise_rulegraph,
    rulegraph_structure,
    run_rulegraph,
    svg_structure,
)

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
SCHEMA = yaml.safe_load((ROOT / "workflow" / "schemas" / "config.schema.yaml").read_text())

# --------------------------------------------------------------------------------------------
# docs/config.md


def test_config_reference_is_current():
    assert (DOCS / "config.md").read_text() == config_reference(ROOT), (
        "docs/config.md is stale: run `make docs` (python scripts/generate_docs.py config)"
    )


def test_config_reference_documents_every_key():
    page = (DOCS / "config.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `([\w.]+)` \|.*\| ([^|]*) \|$", page, re.M)}
    keys = [key for key, _ in schema_keys(SCHEMA)]
    assert list(rows) == keys
    assert "tune.cells.metric" in rows and "resources.default.gpu" in rows
    assert [key for key, text in rows.items() if not text.strip()] == []


def test_config_reference_shows_both_presets_side_by_side():
    page = (DOCS / "config.md").read_text()
    assert "| key | type | default | `demo` preset | `gpu` preset | description |" in page
    row = next(line for line in page.splitlines() if line.startswith("| `train.backbone` |"))
    assert "| `resnet18` | `resnet50` |" in row


@pytest.mark.parametrize(
    "prop, expected",
    [
        ({"type": "integer", "minimum": 1}, "integer ≥ 1"),
        ({"type": ["number", "null"], "minimum": 0, "maximum": 1}, "number in [0, 1] or `null`"),
        ({"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, "number in (0, 1)"),
        ({"enum": ["a", "b", None]}, "one of `a`, `b`, or `null`"),
        (
            {"type": "array", "items": {"enum": ["hflip", "vflip"]}, "uniqueItems": True},
            "list of any of `hflip`, `vflip`, no repeats",
        ),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 5, "maxItems": 5}, "list of integer, 5 items"),
        ({"$ref": "#/definitions/p"}, "number in [0, 1]"),
    ],
)
def test_describe_type(prop, expected):
    assert describe_type(prop, {"p": {"type": "number", "minimum": 0, "maximum": 1}}) == expected


def test_generate_docs_check_passes():
    """`scripts/generate_docs.py --check config` (what CI could run) agrees with the test above."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "generate_docs.py"), "--check", "config"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------------------------
# The rule graph


def test_normalise_rulegraph_sorts_edges_and_strips_blanks():
    dot = 'digraph g {\n\t0[label = "all"];\n\t1[label = "a"];\n\t10 -> 0  \n\t1 -> 0\n\t2 -> 1\n}   \n'
    expected = 'digraph g {\n\t0[label = "all"];\n\t1[label = "a"];\n\t1 -> 0\n\t2 -> 1\n\t10 -> 0\n}\n'
    assert normalise_rulegraph(dot) == expected


@pytest.mark.workflow
def test_rulegraph_dot_is_current():
    committed = (DOCS / "rulegraph.dot").read_text()
    today = run_rulegraph(ROOT)
    assert rulegraph_structure(committed) == rulegraph_structure(today), "rules or edges changed: run `make dag`"
    assert committed == today, "docs/rulegraph.dot is stale: run `make dag`"


def test_rulegraph_svg_shows_the_dot_graph():
    """The SVG holds the .dot's rules and edges (read from the SVG's node and edge titles, so
    no Graphviz is needed and its version does not matter)."""
    dot = (DOCS / "rulegraph.dot").read_text()
    rules, edges = rulegraph_structure(dot)
    assert {"all", "train_fold", "evaluate_test", "tune_thresholds"} <= rules
    assert svg_structure((DOCS / "rulegraph.svg").read_text()) == (rules, edges), (
        "docs/rulegraph.svg differs from docs/rulegraph.dot: run `make dag`"
    )


@pytest.mark.skipif(shutil.which("dot") is None, reason="Graphviz `dot` is not installed")
def test_rulegraph_svg_renders_from_the_dot(tmp_path):
    """Rendered again by this machine's Graphviz: the same graph, and the same bytes when the
    committed SVG was written by the same Graphviz version."""
    svg = tmp_path / "rulegraph.svg"
    subprocess.run(["dot", "-Tsvg", "-o", str(svg), str(DOCS / "rulegraph.dot")], check=True)
    rendered = svg.read_text()
    committed = (DOCS / "rulegraph.svg").read_text()
    assert svg_structure(rendered) == svg_structure(committed)
    version = re.compile(r"Generated by graphviz version ([^\n]+)")
    if version.search(rendered).group(1) == version.search(committed).group(1):
        assert rendered == committed, "docs/rulegraph.svg is stale: run `make dag`"


# --------------------------------------------------------------------------------------------
# docs/design.md


def package_modules() -> set[tuple[str, str]]:
    """The modules of src/cellseg as docs/design.md names them: (subpackage, `name.py`) for a
    module, (subpackage, `name/`) for a package inside it."""
    package = ROOT / "src" / "cellseg"
    modules = {("cellseg", p.name) for p in package.glob("*.py") if p.name != "__init__.py"}
    for stage in (p for p in package.iterdir() if (p / "__init__.py").exists()):
        modules |= {(stage.name, p.name) for p in stage.glob("*.py") if p.name != "__init__.py"}
        modules |= {(stage.name, f"{p.name}/") for p in stage.iterdir() if (p / "__init__.py").exists()}
    return modules


def design_modules() -> set[tuple[str, str]]:
    """(subpackage, name) for the first cell of each table row under a "### `subpackage`"
    heading of design.md's package layout."""
    layout = (DOCS / "design.md").read_text().split("## Package layout", 1)[1].split("\n## ", 1)[0]
    named, stage = set(), None
    for line in layout.splitlines():
        if line.startswith("### "):
            stage = re.findall(r"`([^`]+)`", line)[0]
        elif line.startswith("| `"):
            named |= {(stage, name) for name in re.findall(r"`([^`]+)`", line.split("|")[1])}
    return named


def test_design_names_every_module():
    assert package_modules() - design_modules() == set(), "modules missing from docs/design.md's package layout"


def test_design_names_no_module_that_does_not_exist():
    assert design_modules() - package_modules() == set()


# --------------------------------------------------------------------------------------------
# Snakemake conventions


def test_snakefmt_check_passes():
    """The Snakefile and rule files as snakefmt formats them (requirements.txt pins it)."""
    snakefmt = Path(sys.executable).with_name("snakefmt")
    if not snakefmt.exists():
        snakefmt = shutil.which("snakefmt")
    assert snakefmt, "snakefmt is not installed: pip install -r requirements.txt"
    proc = subprocess.run(
        [str(snakefmt), "--check", "--diff", "Snakefile", "workflow"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, f"run `snakefmt Snakefile workflow`:\n{proc.stdout[-4000:]}{proc.stderr[-2000:]}"


def test_catalog_file_uses_only_documented_keys():
    """The keys the Snakemake workflow catalog documents for .snakemake-workflow-catalog.yml."""
    settings = yaml.safe_load((ROOT / ".snakemake-workflow-catalog.yml").read_text())
    assert set(settings) == {"usage"}
    usage = settings["usage"]
    assert set(usage) <= {"mandatory-flags", "software-stack-deployment"}
    assert set(usage.get("mandatory-flags", {})) <= {"desc", "flags"}
    deployment = usage["software-stack-deployment"]
    assert set(deployment) <= {"conda", "apptainer", "apptainer+conda", "report"}
    assert all(isinstance(value, bool) for value in deployment.values())
    # What it claims rests on files that exist: conda envs, the report, the SLURM profile.
    assert deployment["conda"] and list((ROOT / "envs").glob("*.yaml"))
    assert deployment["report"] and list((ROOT / "workflow" / "report").glob("*.rst"))
    assert (ROOT / "profiles" / "slurm" / "config.yaml").exists()
    assert not deployment.get("apptainer") and not deployment.get("apptainer+conda"), "no container: directive"
