"""The generated reference pages in docs/: the configuration reference and the rule graph.

`config_reference` writes docs/config.md from the schema (every key, its type and default),
config.yaml's comments (the descriptions), `cellseg.training.config.TRAIN_PRESETS` (the presets'
values) and docs/train_keys.md (per-key meanings of the `train:` section). `run_rulegraph` runs
`snakemake --rulegraph` on the default config in an empty directory and returns it in a fixed
order, as docs/rulegraph.dot holds it; docs/rulegraph.svg is rendered from that file by Graphviz
(`make dag`). `scripts/generate_docs.py` writes both; tests/test_generated_docs.py fails when
either file differs from what these functions give today. Imports no torch.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

from cellseg.training.config import TRAIN_PRESETS
from cellseg.workflow.recipes import recipe_values

SCHEMA = Path("workflow") / "schemas" / "config.schema.yaml"
CONFIG = Path("config.yaml")
TRAIN_KEYS = Path("docs") / "train_keys.md"

_KEY_LINE = re.compile(r"^( *)([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")
_RULER = re.compile(r"^-{5,}$")
_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_./@+-]*$")


# --------------------------------------------------------------------------------------------
# config.yaml's comments


def config_comments(text: str) -> dict[str, tuple[str, str]]:
    """The comment that documents each key of a YAML config file, by dotted key.

    A block of `#` lines directly above a key (no blank line between) is that key's own
    comment. A key without one, written on the line right after a sibling (same indentation,
    no blank or comment line between), shares that sibling's comment: config.yaml documents
    groups such as `min_size` / `max_size` with one comment. Lines of dashes (section rulers)
    are skipped. Returns {dotted key: (kind, text)}, kind `own` or `shared`; keys without
    either are left out. Block keys only (`key: value` / `key:`), as config.yaml writes them.
    """
    comments: dict[str, tuple[str, str]] = {}
    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    previous: tuple[int, str | None] | None = None  # (indent, comment) of the line above, a key
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            pending, previous = [], None
            continue
        if stripped.startswith("#"):
            body = stripped.lstrip("#").strip()
            if body and not _RULER.match(body):
                pending.append(body)
            previous = None
            continue
        match = _KEY_LINE.match(line)
        if not match:
            pending, previous = [], None
            continue
        indent, key = len(match.group(1)), match.group(2)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([k for _, k in stack] + [key])
        if pending:
            comment = " ".join(pending)
            comments[dotted] = ("own", comment)
        elif previous is not None and previous[0] == indent and previous[1] is not None:
            comment = previous[1]
            comments[dotted] = ("shared", comment)
        else:
            comment = None
        stack.append((indent, key))
        pending, previous = [], (indent, comment)
    return comments


def train_key_meanings(markdown: str) -> dict[str, str]:
    """The `meaning` column of docs/train_keys.md's table, by key."""
    meanings = {}
    for line in markdown.splitlines():
        if not line.startswith("| ") or line.startswith(("| key ", "| ---")):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        meanings[cells[0]] = cells[1]
    return meanings


# --------------------------------------------------------------------------------------------
# The schema's keys


def _resolve(prop: dict, definitions: dict) -> dict:
    """`prop` with a `$ref` into `definitions` merged in (its own keys win)."""
    if "$ref" not in prop:
        return prop
    name = prop["$ref"].rsplit("/", 1)[-1]
    return {**definitions[name], **{k: v for k, v in prop.items() if k != "$ref"}}


def _types(prop: dict) -> list[str]:
    kind = prop.get("type", [])
    return [kind] if isinstance(kind, str) else list(kind)


def is_section(prop: dict) -> bool:
    """A mapping whose keys are config keys of their own (not a nullable mapping value)."""
    return _types(prop) == ["object"] and "properties" in prop


def schema_keys(schema: dict) -> list[tuple[str, dict]]:
    """(dotted key, property) of every key a user sets, in the schema's order: the leaves, with
    sections (`tune.cells`) walked into and `$ref`s resolved."""
    definitions = schema.get("definitions", {})
    keys = []

    def walk(properties: dict, prefix: str) -> None:
        for name, prop in properties.items():
            prop = _resolve(prop, definitions)
            if is_section(prop):
                walk(prop["properties"], f"{prefix}{name}.")
            else:
                keys.append((f"{prefix}{name}", prop))

    walk(schema["properties"], "")
    return keys


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


def key_descriptions(
    keys: list[str], comments: dict[str, tuple[str, str]], train_meanings: dict[str, str], schema_texts: dict[str, str]
) -> dict[str, str]:
    """One description per key: config.yaml's own comment; else, for `train.*`, its meaning in
    docs/train_keys.md; else the schema's `description`; else the comment it shares with the
    sibling above it in config.yaml; else that of the nearest enclosing section."""
    out = {}
    for key in keys:
        kind, comment = comments.get(key, (None, ""))
        section, _, name = key.rpartition(".")
        candidates = [
            comment if kind == "own" else "",
            train_meanings.get(name, "") if section == "train" else "",
            schema_texts.get(key, ""),
            comment if kind == "shared" else "",
        ]
        parent = section
        while parent:
            candidates.append(comments.get(parent, (None, ""))[1] or schema_texts.get(parent, ""))
            parent = parent.rpartition(".")[0]
        out[key] = next((text for text in candidates if text), "")
    return out


def config_reference(root: str | Path = ".") -> str:
    """docs/config.md as the generator writes it today, from the files under `root`."""
    root = Path(root)
    schema = yaml.safe_load((root / SCHEMA).read_text())
    comments = config_comments((root / CONFIG).read_text())
    meanings = train_key_meanings((root / TRAIN_KEYS).read_text())
    return render_config_reference(schema, comments, meanings, TRAIN_PRESETS, recipe_values())


def _schema_descriptions(schema: dict) -> dict[str, str]:
    texts = {}

    def walk(properties: dict, prefix: str) -> None:
        for name, prop in properties.items():
            if "description" in prop:
                texts[f"{prefix}{name}"] = " ".join(str(prop["description"]).split())
            if "properties" in prop and "object" in _types(prop):
                walk(prop["properties"], f"{prefix}{name}.")

    walk(schema["properties"], "")
    return texts


def render_config_reference(
    schema: dict,
    comments: dict[str, tuple[str, str]],
    train_meanings: dict[str, str],
    presets: dict[str, dict],
    recipes: dict[str, dict],
) -> str:
    """The configuration reference in Markdown: one table per top-level key of the schema.
    `recipes`: {dotted key: {recipe: value}} (`cellseg.workflow.recipes.recipe_values`), shown after
    the description of each key a recipe fills."""
    definitions = schema.get("definitions", {})
    keys = schema_keys(schema)
    schema_texts = _schema_descriptions(schema)
    descriptions = key_descriptions([k for k, _ in keys], comments, train_meanings, schema_texts)
    preset_names = list(presets)
    sections: dict[str, list[tuple[str, dict]]] = {}
    for key, prop in keys:
        sections.setdefault(key.split(".")[0], []).append((key, prop))

    lines = [
        "# Configuration reference",
        "",
        "<!-- Generated by `make docs` (scripts/generate_docs.py) from workflow/schemas/config.schema.yaml,",
        "     config.yaml's comments, the presets of src/cellseg/training/config.py and docs/train_keys.md.",
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
        intro = comments.get(name, (None, ""))[1] if is_section(section_prop) else ""
        if intro:
            lines += [intro, ""]
        if name == "train":
            lines += [
                "The preset columns show the value each preset gives a key left at `null`.",
                "",
                "| key | type | default | " + " | ".join(f"`{p}` preset" for p in preset_names) + " | description |",
                "| --- | --- | --- | " + " | ".join("---" for _ in preset_names) + " | --- |",
            ]
        else:
            lines += ["| key | type | default | description |", "| --- | --- | --- | --- |"]
        for key, prop in members:
            row = [f"`{key}`", describe_type(prop, definitions), f"`{yaml_inline(prop.get('default'))}`"]
            if name == "train":
                leaf = key.split(".", 1)[1]
                row += [
                    f"`{yaml_inline(presets[p][leaf])}`" if leaf in presets[p] else "" for p in preset_names
                ]
            given = recipes.get(key, {})
            recipe_text = ", ".join(f"{name} `{yaml_inline(value)}`" for name, value in given.items())
            row.append(descriptions[key] + (f" Recipes: {recipe_text}." if given else ""))
            lines.append("| " + " | ".join(_cell(cell) for cell in row) + " |")
        lines.append("")
    return "\n".join(lines)


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
                "--configfile", str(root / CONFIG), "--cores", "1", "--rulegraph",
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
