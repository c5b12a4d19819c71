"""Shared fixtures: a small demo dataset, written once per test session."""

from pathlib import Path

import pytest

from cellseg.demo import write_demo_dataset

DEMO_CLASSES = ["class1", "class2", "class3", "class4"]


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """Demo data in format 1: 4 training images (40x90, 256x256, 2 random), 2 test images."""
    out = tmp_path_factory.mktemp("demo")
    write_demo_dataset(out, seed=0, n_train=4, n_test=2)
    return out


@pytest.fixture(scope="session")
def demo_source(demo_dir) -> dict:
    """The resolved `data:` config section naming `demo_dir`."""
    return {"format": "reference", "path": str(demo_dir), "classes": list(DEMO_CLASSES)}
