"""The generated files: config.yaml and docs/config.md from the schema, and the rule graph.

The schema (workflow/schemas/config.schema.yaml) is the one home of every key's type, default
and description, and of the presets' and recipes' values (`cellseg.workflow.configuration`).
`config_yaml` writes config.yaml from it: every key at its default, its description as the
comment above it. `config_reference` writes docs/config.md: every key with its type, default,
preset and recipe values and description. `run_rulegraph` runs `snakemake --rulegraph` on the
default config in an empty directory and returns it in a fixed order, as docs/rulegraph.dot
holds it; docs/rulegraph.svg is rendered from that file by Graphviz (`make dag`).
`scripts/generate_docs.py` writes them; tests/test_generated_docs.py fails when a file differs
from what these functions give today. Imports no torch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from cellseg.workflow.configuration import _resolve, _types, is_section, recipe_values, schema_keys, train_presets

SCHEMA = Path("workflow") / "schemas" / "config.schema.yaml"

_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./@+-]*$")
COMMENT_WIDTH = 95
RULER = "# " + "-" * (COMMENT_WIDTH - 2)


# --------------------------------------------------------------------------------------------
# The schema's keys


def yaml_inline(value) -> str:
    """A value as config.yaml would write it on one line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        plain = _PLAIN.match(value) and yaml.safe_load(value) == value
        return value if plain else json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(yaml_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_inline(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _number_range(prop: dict) -> str:
    low = prop.get("minimum", prop.get("exclusiveMinimum"))
    high = prop.get("maximum", prop.get("exclusiveMaximum"))
    if low is not None and high is not None:
        left = "(" if "exclusiveMinimum" in prop else "["
        right = ")" if "exclusiveMaximum" in prop else "]"
        return f" in {left}{low}, {high}{right}"
    if low is not None:
        return f" > {low}" if "exclusiveMinimum" in prop else f" ≥ {low}"
    if high is not None:
        return f" < {high}" if "exclusiveMaximum" in prop else f" ≤ {high}"
    return ""


def describe_type(prop: dict, definitions: dict | None = None) -> str:
    """A schema property's type in words: `integer ≥ 1`, `one of a, b`, `list of …`."""
    prop = _resolve(prop, definitions or {})
    if "enum" in prop:
        choices = [v for v in prop["enum"] if v is not None]
        text = "one of " + ", ".join(f"`{yaml_inline(v)}`" for v in choices)
        return text + (", or `null`" if None in prop["enum"] else "")
    kinds = _types(prop)
    nullable = "null" in kinds
    kinds = [k for k in kinds if k != "null"]
    parts = []
    for kind in kinds:
        if kind == "array":
            items = _resolve(prop.get("items", {}), definitions or {})
            if "enum" in items:
                text = "list of any of " + ", ".join(f"`{yaml_inline(v)}`" for v in items["enum"])
            else:
                inner = describe_type(items, definitions)
                text = f"list of {inner}" if inner else "list"
            low, high = prop.get("minItems"), prop.get("maxItems")
            if low is not None and low == high:
                text += f", {low} items"
            elif low:
                text += f", at least {low}"
            if prop.get("uniqueItems"):
                text += ", no repeats"
            parts.append(text)
        elif kind == "object":
            fields = prop.get("properties", {})
            if fields:
                inner = {describe_type(f, definitions) for f in fields.values()}
                value = inner.pop() if len(inner) == 1 else "values"
                parts.append(f"mapping of {', '.join(fields)} to {value}")
            else:
                parts.append("mapping")
        elif kind in ("integer", "number"):
            parts.append(kind + _number_range(prop))
        else:
            parts.append(kind)
    text = " or ".join(parts)
    return f"{text} or `null`" if nullable else text


# --------------------------------------------------------------------------------------------
# docs/config.md


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _flat(text: str) -> str:
    return " ".join(text.split())


def config_reference(root: str | Path = ".") -> str:
    """docs/config.md as the generator writes it today, from the schema under `root`."""
    return render_config_reference(yaml.safe_load((Path(root) / SCHEMA).read_text()))


def render_config_reference(schema: dict) -> str:
    """The configuration reference in Markdown: one table per top-level key of the schema, the
    train section with a column per preset; each key a recipe fills says the recipes' values
    after its description."""
    definitions = schema.get("definitions", {})
    presets = train_presets(schema)
    recipes = recipe_values(schema)
    sections: dict[str, list[tuple[str, dict]]] = {}
    for key, prop in schema_keys(schema):
        sections.setdefault(key.split(".")[0], []).append((key, prop))

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `make docs` (scripts/generate_docs.py) from workflow/schemas/config.schema.yaml,",
        "     the one home of every key's type, default, description, preset and recipe values.",
        "     Do not edit: tests/test_generated_docs.py fails when this page differs from what the",
        "     generator writes. -->",
        "",
        "Every key of `config.yaml`. The workflow validates the configuration against",
        "`workflow/schemas/config.schema.yaml` before any job runs: a key left out takes its default,",
        "an unknown key or a value of the wrong type stops the run with a message naming the key.",
        "Nested keys are written with dots (`tune.cells.metric` is `metric:` under `cells:` under",
        "`tune:`). To change keys for one run, put them in a second file and run",
        "`snakemake --cores 8 --configfile config.yaml my.yaml` (later files override earlier ones,",
        "key by key), or give one on the command line (`--config segment_images=DIR`).",
        "",
        "Sections: " + ", ".join(f"[`{name}`](#{name})" for name in sections) + ".",
        "",
    ]
    for name, members in sections.items():
        lines += [f"## {name}", ""]
        section_prop = schema["properties"][name]
        if is_section(section_prop) and section_prop.get("description"):
            lines += [_flat(section_prop["description"]), ""]
        if name == "train":
            lines += [
                "The preset columns show the value each preset gives a key left at `null`.",
                "",
                "| key | type | default | " + " | ".join(f"`{p}` preset" for p in presets) + " | description |",
                "| --- | --- | --- | " + " | ".join("---" for _ in presets) + " | --- |",
            ]
        else:
            lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, prop in members:
            row = [f"`{key}`", describe_type(prop, definitions), f"`{yaml_inline(prop.get('default'))}`"]
            if name == "train":
                row += [f"`{yaml_inline(values[key[6:]])}`" if key[6:] in values else "" for values in presets.values()]
            given = recipes.get(key, {})
            recipe_text = ", ".join(f"{recipe} `{yaml_inline(value)}`" for recipe, value in given.items())
            row.append(_flat(prop.get("description", "")) + (f" Recipes: {recipe_text}." if given else ""))
            lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# config.yaml


def config_yaml(root: str | Path = ".") -> str:
    """config.yaml as the generator writes it today, from the schema under `root`."""
    return render_config_yaml(yaml.safe_load((Path(root) / SCHEMA).read_text()))


def render_config_yaml(schema: dict) -> str:
    """Every key at its default, its description as the comment above it; keys in a row with the
    same description share one comment; a ruler before each section."""
    lines = _comment(schema["description"], 0) + [""]
    for name, prop in schema["properties"].items():
        lines += [RULER] + _yaml_entry(name, prop, 0, previous=None) + [""]
    return "\n".join(lines[:-1]) + "\n"


def _yaml_entry(name: str, prop: dict, indent: int, previous: str | None) -> list[str]:
    text = prop.get("description")
    lines = _comment(text, indent) if text and text != previous else []
    pad = " " * indent
    if not is_section(prop):
        return lines + [f"{pad}{name}: {yaml_inline(prop.get('default'))}"]
    lines.append(f"{pad}{name}:")
    last = None
    for child, child_prop in prop["properties"].items():
        lines += _yaml_entry(child, child_prop, indent + 2, previous=last)
        last = child_prop.get("description")
    return lines


def _comment(text: str, indent: int) -> list[str]:
    """`text` as `#` lines at `indent`: its own line breaks kept, a single line wrapped."""
    pad = " " * indent
    if "\n" in text:
        return [f"{pad}# {line}".rstrip() for line in text.splitlines()]
    return [f"{pad}# {line}" for line in textwrap.wrap(text, COMMENT_WIDTH - indent - 2)]


# --------------------------------------------------------------------------------------------
# The rule graph

_DOT_NODE = re.compile(r'^\s*(\d+)\[label = "([^"]+)"')
_DOT_EDGE = re.compile(r"^\s*(\d+) -> (\d+)\s*$")


def run_rulegraph(root: str | Path = ".", python: str = sys.executable) -> str:
    """`snakemake --rulegraph` of the checkout at `root` with its config.yaml, run in an empty
    directory (so no earlier results change the graph), as normalised by `normalise_rulegraph`."""
    root = Path(root).resolve()
    with tempfile.TemporaryDirectory(prefix="cellseg-rulegraph-") as workdir:
        proc = subprocess.run(
            [
                python, "-m", "snakemake", "--snakefile", str(root / "Snakefile"), "--directory", workdir,
                "--configfile", str(root / "config.yaml"), "--cores", "1", "--rulegraph",
            ],
            capture_output=True,
            text=True,
            check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake --rulegraph failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return normalise_rulegraph(proc.stdout)


def normalise_rulegraph(dot: str) -> str:
    """Snakemake's rule graph with the edges sorted (Snakemake writes them in an order that
    changes from run to run) and trailing blanks removed."""
    lines = [line.rstrip() for line in dot.strip().splitlines()]
    edges = [line for line in lines if _DOT_EDGE.match(line)]
    rest = [line for line in lines if not _DOT_EDGE.match(line)]
    if not rest or rest[-1] != "}":
        raise ValueError("not a Graphviz digraph ending in '}'")
    key = lambda line: tuple(int(n) for n in _DOT_EDGE.match(line).groups())  # noqa: E731
    return "\n".join(rest[:-1] + sorted(edges, key=key) + ["}"]) + "\n"


def rulegraph_structure(dot: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The rules and the edges between them (by rule name) of a rule graph in DOT."""
    labels = {m.group(1): m.group(2) for m in map(_DOT_NODE.match, dot.splitlines()) if m}
    edges = {(labels[m.group(1)], labels[m.group(2)]) for m in map(_DOT_EDGE.match, dot.splitlines()) if m}
    return set(labels.values()), edges


def svg_structure(svg: str) -> tuple[set[str], set[tuple[str, str]]]:
    """The nodes (by their text) and edges of a Graphviz SVG, as `rulegraph_structure` gives
    them for its source: checks an SVG against its DOT without Graphviz."""
    ns = {"svg": "http://www.w3.org/2000/svg"}
    root = ET.fromstring(svg)
    labels, edges = {}, set()
    for group in root.iter("{http://www.w3.org/2000/svg}g"):
        title = group.find("svg:title", ns)
        if title is None:
            continue
        if group.get("class") == "node":
            labels[title.text] = "".join(group.find("svg:text", ns).itertext())
        elif group.get("class") == "edge":
            source, target = title.text.split("->")
            edges.add((source, target))
    return set(labels.values()), {(labels[s], labels[t]) for s, t in edges}
