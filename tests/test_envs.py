"""The conda envs, checked without solving them (conda channels are not reachable in CI).

- every `envs/*.yaml` is valid, pins each package to one version, and agrees with
  requirements.txt (the stack the tests run on);
- every rule that runs code names an env file that exists;
- every third-party module a rule's script imports, directly or through the `cellseg` modules
  it reaches (imports inside functions included), is provided by that rule's env.

The rules are read through Snakemake's API, with the repository's own config.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

from cellseg.workflow.codehash import imported_modules

ROOT = Path(__file__).resolve().parents[1]
ENVS_DIR = ROOT / "envs"
PACKAGE_DIR = ROOT / "src" / "cellseg"
ENV_FILES = sorted(ENVS_DIR.glob("*.yaml"))

# Conda dependencies that are not pip packages (absent from requirements.txt). `python` is
# pinned to a minor version; `pip` is only the installer of the `pip:` section and is left free.
NOT_IN_REQUIREMENTS = {"python", "pip"}
UNPINNED_OK = {"pip"}

# Conda package name -> the name of the same package on PyPI, where they differ.
CONDA_TO_PIP = {"pytorch": "torch", "matplotlib-base": "matplotlib", "py-opencv": "opencv-python"}

# Import name -> names of the packages (conda or pip) that provide it, where not the same name.
IMPORT_TO_PACKAGES = {
    "yaml": {"pyyaml"},
    "torch": {"pytorch", "torch"},
    "PIL": {"pillow"},
    "cv2": {"opencv", "py-opencv", "opencv-python", "opencv-python-headless"},
    "skimage": {"scikit-image"},
    "sklearn": {"scikit-learn"},
    "matplotlib": {"matplotlib-base", "matplotlib"},
    "mpl_toolkits": {"matplotlib-base", "matplotlib"},
    "pycocotools": {"pycocotools"},
    "faster_coco_eval": {"faster-coco-eval"},
    "ensemble_boxes": {"ensemble-boxes"},
    "albumentations": {"albumentations"},
}

# Provided to every script without being a dependency: the library itself (put on sys.path by
# the script) and `snakemake` (the script object is injected by Snakemake).
PROVIDED = {"cellseg", "snakemake"}

CONDA_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)==?(?P<version>\d+(\.\d+)*)$")
PIP_PIN = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]*)==(?P<version>\d+(\.\d+)*)$")


def normalize(name: str) -> str:
    """PEP 503 name: lower case, runs of `-_.` as one `-`."""
    return re.sub(r"[-_.]+", "-", name).lower()


def load_env(path: Path) -> dict:
    with open(path) as stream:
        env = yaml.safe_load(stream)
    assert isinstance(env, dict), f"{path.name}: not a YAML mapping"
    return env


def env_packages(path: Path) -> dict[str, tuple[str, str | None]]:
    """{normalized name: (section, pinned version or None)} of an env's conda and pip packages."""
    packages = {}
    for dep in load_env(path).get("dependencies") or []:
        if isinstance(dep, dict):
            for spec in dep.get("pip") or []:
                match = PIP_PIN.match(str(spec).strip())
                name = match["name"] if match else re.split(r"[=<>!~\[ ;]", str(spec))[0]
                packages[normalize(name)] = ("pip", match["version"] if match else None)
        else:
            match = CONDA_PIN.match(str(dep).strip())
            name = match["name"] if match else re.split(r"[=<>!~ ]", str(dep))[0]
            packages[normalize(name)] = ("conda", match["version"] if match else None)
    return packages


def requirements() -> dict[str, str]:
    """{normalized name: version} of requirements.txt's `name==version` lines."""
    pins = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        match = PIP_PIN.match(line)
        assert match, f"requirements.txt: {line!r} is not pinned as name==version"
        pins[normalize(match["name"])] = match["version"]
    return pins


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_file_is_valid(path):
    env = load_env(path)
    assert env.get("channels"), f"{path.name}: no channels"
    assert env.get("dependencies"), f"{path.name}: no dependencies"
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            assert set(dep) == {"pip"}, f"{path.name}: unexpected section {sorted(dep)}"
            assert "pip" in env_packages(path), f"{path.name}: has a pip: section but no pip"
        else:
            assert isinstance(dep, str), f"{path.name}: dependency {dep!r} is not a string"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_pins_every_package(path):
    unpinned = [
        f"{name} ({section})"
        for name, (section, version) in env_packages(path).items()
        if version is None and name not in UNPINNED_OK
    ]
    assert not unpinned, f"{path.name}: not pinned to one version: {', '.join(unpinned)}"


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_env_versions_match_requirements(path):
    pins = requirements()
    problems = []
    for name, (section, version) in env_packages(path).items():
        if name in NOT_IN_REQUIREMENTS:
            continue
        pip_name = CONDA_TO_PIP.get(name, name) if section == "conda" else name
        if pip_name not in pins:
            problems.append(f"{name}: not in requirements.txt (as {pip_name})")
        elif version is not None and version != pins[pip_name]:
            problems.append(f"{name}={version} but requirements.txt has {pip_name}=={pins[pip_name]}")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_envs_exist():
    assert ENV_FILES, f"no env files in {ENVS_DIR}"


# ---------------------------------------------------------------------------------------------
# Rules, read through Snakemake's API


@pytest.fixture(scope="module")
def rules() -> list:
    """The workflow's rules, parsed with the repository's config (dry: nothing is written)."""
    from snakemake.api import SnakemakeApi
    from snakemake.settings.enums import Quietness
    from snakemake.settings.types import OutputSettings, ResourceSettings

    output = OutputSettings(dryrun=True, enable_file_logging=False, quiet={Quietness.ALL})
    with SnakemakeApi(output) as api:
        workflow_api = api.workflow(
            resource_settings=ResourceSettings(), snakefile=ROOT / "Snakefile", workdir=ROOT
        )
        return list(workflow_api._workflow.rules)


def rule_file(rule, relative: str) -> Path:
    """A `conda:`/`script:` path, which Snakemake resolves against the rule's own .smk file."""
    return (Path(rule.snakefile).parent / relative).resolve()


def code_rules(rules) -> list:
    """Rules that run something (not target-only rules such as `all`)."""
    return [rule for rule in rules if not rule.norun]


def test_workflow_has_rules(rules):
    assert len(code_rules(rules)) >= 5, [rule.name for rule in rules]


def test_every_rule_names_an_existing_env(rules):
    problems = []
    for rule in code_rules(rules):
        if rule.conda_env is None:
            problems.append(f"rule {rule.name}: no conda: directive")
            continue
        assert isinstance(rule.conda_env, str), f"rule {rule.name}: conda env is not a path"
        env = rule_file(rule, rule.conda_env)
        if not env.is_file():
            problems.append(f"rule {rule.name}: conda env {rule.conda_env} -> {env} not found")
        elif env.parent != ENVS_DIR:
            problems.append(f"rule {rule.name}: conda env {env} is outside {ENVS_DIR}")
    assert not problems, "\n".join(problems)


def third_party_imports(path: Path) -> set[str]:
    """Top-level names of every non-stdlib module `path` imports, anywhere in the file."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return {name for name in names if name not in sys.stdlib_module_names} - PROVIDED


def script_imports(script: Path) -> dict[str, set[str]]:
    """{third-party module: files importing it} for a script and the cellseg modules it reaches."""
    files = [script]
    for name in sorted(imported_modules(script, PACKAGE_DIR) | {"cellseg"}):
        parts = name.split(".")[1:]
        files.append(
            PACKAGE_DIR.joinpath(*parts).with_suffix(".py") if parts else PACKAGE_DIR / "__init__.py"
        )
    found: dict[str, set[str]] = {}
    for path in files:
        for module in third_party_imports(path):
            found.setdefault(module, set()).add(path.relative_to(ROOT).as_posix())
    return found


def providers(module: str) -> set[str]:
    return {normalize(name) for name in IMPORT_TO_PACKAGES.get(module, {module})}


def test_script_imports_helper_sees_function_level_imports(tmp_path):
    script = tmp_path / "s.py"
    script.write_text(
        "import os, numpy.linalg\nfrom scipy import ndimage\nfrom . import x\n"
        "def f():\n    import torch\n    from PIL import Image\n"
    )
    assert third_party_imports(script) == {"numpy", "scipy", "torch", "PIL"}


def test_every_rule_env_provides_its_script_imports(rules):
    problems = []
    for rule in code_rules(rules):
        if rule.script is None or rule.conda_env is None:
            continue  # no script to check, or reported by test_every_rule_names_an_existing_env
        script = rule_file(rule, rule.script)
        env = rule_file(rule, rule.conda_env)
        if not script.is_file() or not env.is_file():
            problems.append(f"rule {rule.name}: script {script} or env {env} not found")
            continue
        packages = set(env_packages(env))
        for module, importers in sorted(script_imports(script).items()):
            if not providers(module) & packages:
                problems.append(
                    f"rule {rule.name}: script {script.relative_to(ROOT)} imports {module!r} "
                    f"(in {', '.join(sorted(importers))}) but env {env.relative_to(ROOT)} has "
                    f"none of {sorted(providers(module))}"
                )
    assert not problems, "\n".join(problems)
