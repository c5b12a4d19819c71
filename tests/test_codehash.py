import shutil
from pathlib import Path

from cellseg.workflow.codehash import code_digest, imported_modules


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_package(tmp_path: Path) -> Path:
    package = tmp_path / "cellseg"
    write(package / "__init__.py", "")
    write(package / "a.py", "from cellseg.b import f\n")
    write(package / "b.py", "import numpy\ndef f():\n    return 1\n")
    write(package / "c.py", "x = 1\n")
    return package


def test_follows_imports_transitively(tmp_path):
    package = make_package(tmp_path)
    script = write(tmp_path / "s.py", "from cellseg import a\nimport os\n")
    assert imported_modules(script, package) == {"cellseg", "cellseg.a", "cellseg.b"}


def test_digest_changes_with_a_reached_module_only(tmp_path):
    package = make_package(tmp_path)
    script = write(tmp_path / "s.py", "from cellseg.a import f\n")
    before = code_digest(script, package)
    write(package / "c.py", "x = 2\n")  # not reached by the script
    assert code_digest(script, package) == before
    write(package / "b.py", "def f():\n    return 2\n")  # reached through a
    assert code_digest(script, package) != before


def test_workflow_scripts_reach_their_modules():
    root = Path(__file__).parents[1]
    script = root / "workflow" / "scripts" / "compute_maps.py"
    modules = imported_modules(script, root / "src" / "cellseg")
    assert {"cellseg.data.target_maps", "cellseg.data.dataset", "cellseg.common.images"} <= modules
    assert "cellseg.model.mask_rcnn" not in modules


# Modules only training uses: a change to them must not alter the predict stage's digest.
TRAINING_ONLY = [
    "training.train",
    "training.history",
    "training.data",
    "data.augment",
    "data.copy_paste",
    "model.checkpoint",
    "model.ema",
]


def test_predict_digest_covers_no_training_module(tmp_path):
    root = Path(__file__).parents[1]
    package = tmp_path / "cellseg"
    shutil.copytree(root / "src" / "cellseg", package, ignore=shutil.ignore_patterns("__pycache__"))
    script = root / "workflow" / "scripts" / "predict_fold.py"
    assert not {f"cellseg.{name}" for name in TRAINING_ONLY} & imported_modules(script, package)
    before = code_digest(script, package)
    for name in TRAINING_ONLY:
        with open(package / f"{name.replace('.', '/')}.py", "a") as source:
            source.write("\n# a training-only change\n")
    assert code_digest(script, package) == before
    assert code_digest(root / "workflow" / "scripts" / "train_fold.py", package) != code_digest(
        root / "workflow" / "scripts" / "train_fold.py", root / "src" / "cellseg"
    )
