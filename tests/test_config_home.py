"""The schema is the one home of the configuration keys, and `cellseg.workflow.configuration`
the one place that checks them (docs/design.md, "Package layout").

- No code lists keys of a config section (a tuple, list, set or dict of three or more of them):
  their types, defaults, presets and recipes are the schema's, read through the configuration
  module.
- No module but the configuration module raises a `ConfigError`, except for the conditions
  listed below, each of which needs what only that place has.
"""

import ast
import re
from pathlib import Path

from cellseg.workflow.configuration import is_section, load_schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "cellseg"

# Module → the keys its `ConfigError`s name, and why the check cannot run with the others.
CHECKED_ELSEWHERE = {
    # Snakemake parses config.yaml before any workflow code runs: a YAML syntax error is
    # reported there, with the line, before the schema can be applied.
    "workflow/config_file.py": {"{path}"},
    # A GPU without bf16 is known only on the node that runs the job.
    "common/device.py": {"train.amp"},
    # Groups and fold sizes need the image ids (the data), read while the DAG is built.
    "data/split.py": {"split.group_by", "split.folds"},
    # The run to fine-tune from, its folder and train_summary.json, read while the DAG is built.
    "model/init_source.py": {"train.init_from"},
    # The tensors in a weights file, read where the job runs (a compute node's copy).
    "model/finetune.py": {"train.init_from"},
    "model/weights.py": {"train.weights", "train.weights_path", "{label}"},
}


def section_keys() -> dict[str, set[str]]:
    """{section: its keys}, for every section of the schema (nested ones dotted)."""
    sections = {}

    def walk(prop: dict, name: str) -> None:
        sections[name] = set(prop["properties"])
        for key, child in prop["properties"].items():
            if is_section(child):
                walk(child, f"{name}.{key}" if name else key)

    walk(load_schema(), "")
    sections.pop("")
    return sections


def string_groups(path: Path) -> list[tuple[int, list[str]]]:
    """(line, strings) of every literal tuple, list, set or dict (its keys) holding only strings."""
    groups = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            items = node.elts
        elif isinstance(node, ast.Dict):
            items = node.keys
        else:
            continue
        if items and all(isinstance(item, ast.Constant) and isinstance(item.value, str) for item in items):
            groups.append((node.lineno, [item.value for item in items]))
    return groups


def smk_string_groups(path: Path) -> list[tuple[int, list[str]]]:
    """The same for a rules file, whose Python parts `ast` cannot parse: bracketed runs of
    quoted words."""
    groups = []
    text = path.read_text()
    for match in re.finditer(r"[(\[{]([^()\[\]{}]*)[)\]}]", text):
        words = re.findall(r"""["'](\w+)["']""", match.group(1))
        if words:
            groups.append((text.count("\n", 0, match.start()) + 1, words))
    return groups


def key_listings(groups, where: str, sections: dict[str, set[str]]) -> list[str]:
    found = []
    for line, strings in groups:
        for section, keys in sections.items():
            if len(strings) >= 3 and set(strings) <= keys:
                found.append(f"{where}:{line}: {section} keys {strings}")
    return found


def test_no_code_lists_the_keys_of_a_config_section():
    sections = section_keys()
    found = []
    for path in [*PACKAGE.rglob("*.py"), *(ROOT / "workflow" / "scripts").glob("*.py")]:
        found += key_listings(string_groups(path), str(path.relative_to(ROOT)), sections)
    for path in [ROOT / "Snakefile", *(ROOT / "workflow" / "rules").glob("*.smk")]:
        found += key_listings(smk_string_groups(path), str(path.relative_to(ROOT)), sections)
    assert found == [], "keys listed outside the schema: mark them in the schema (as x-test-set) instead"


def test_the_scan_finds_a_listing(tmp_path):
    """The check above would pass on a scan that finds nothing."""
    (tmp_path / "m.py").write_text('KEYS = ("size", "overlap", "skip_empty")\nOK = ("size", "other", "x")\n')
    found = key_listings(string_groups(tmp_path / "m.py"), "m.py", section_keys())
    assert found == ["m.py:1: tiles keys ['size', 'overlap', 'skip_empty']"]
    (tmp_path / "r.smk").write_text('rule a:\n    params:\n        x={"size": 1, "overlap": 2, "skip_empty": 3},\n')
    assert key_listings(smk_string_groups(tmp_path / "r.smk"), "r.smk", section_keys())


def named_key(node: ast.Raise) -> str:
    """The key a `raise ConfigError(...)` names: its message's first word, before ` ` or `:`."""
    message = node.exc.args[0]
    if isinstance(message, ast.JoinedStr):
        first = message.values[0]
        text = first.value if isinstance(first, ast.Constant) else "{" + ast.unparse(first.value) + "}"
    else:
        text = message.value
    return re.split(r"[ :=]", text, maxsplit=1)[0]


def config_errors() -> dict[str, set[str]]:
    """{module: keys} of every `raise ConfigError(...)` outside the configuration module."""
    found: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = str(path.relative_to(PACKAGE))
        if module == "workflow/configuration.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            exc = isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc
            if exc and isinstance(exc.func, ast.Name) and exc.func.id == "ConfigError":
                found.setdefault(module, set()).add(named_key(node))
    return found


def test_config_checks_live_in_the_configuration_module_unless_only_a_job_can_make_them():
    assert config_errors() == CHECKED_ELSEWHERE
