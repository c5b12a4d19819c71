"""Shared fixtures: a small demo dataset and one finished tiny pipeline run, each made once per
test session (the run shared by the workers under pytest-xdist); one torch thread. The tiers: a
test that starts Snakemake or a training process is marked `workflow` (or `slow`, `slurm`); the
rest, the unit tier (`make test-fast`), may not start Snakemake, which a guard here enforces."""

import fcntl
import json
import os
import shutil
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from workflow_helpers import Run, copy_repo, snakemake

from cellseg.data.demo import write_demo_dataset

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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Two shared cores: more threads than free cores make every step several times slower.
    For modules that train (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pytest_addoption(parser):
    parser.addoption(
        "--run-demo", action="store_true", help="run the full demo against tests/expected (make check-demo)"
    )


def pytest_configure(config):
    config.addinivalue_line("markers", "demo: runs the full demo (about 8 min on 2 cores); needs --run-demo")
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # `make test` runs one worker per core: a second thread per worker would only contend.
        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"


TIER_MARKS = ("workflow", "slow", "slurm", "demo")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "finished_run" in item.fixturenames:  # the session's whole pipeline run
            item.add_marker(pytest.mark.workflow)
    heaviest_files_first(items)
    if config.getoption("--run-demo"):
        return
    skip = pytest.mark.skip(reason="the full demo runs only with --run-demo (make check-demo)")
    for item in items:
        if item.get_closest_marker("demo"):
            item.add_marker(skip)


def heaviest_files_first(items) -> None:
    """Order the files SLURM, slow, workflow, unit tier, larger first, keeping each file's own
    order. `make test` hands whole files to its pytest-xdist workers in this order
    (`--dist loadfile --no-loadscope-reorder`), so the two longest start at once instead of last."""
    file_of = {item: item.nodeid.split("::")[0] for item in items}
    rank, size = {}, Counter(file_of.values())
    for item, file in file_of.items():
        tier = next((k for k, mark in enumerate(("slurm", "slow", "workflow")) if item.get_closest_marker(mark)), 3)
        rank[file] = min(rank.get(file, 3), tier)
    items.sort(key=lambda item: (rank[file_of[item]], -size[file_of[item]]))


@pytest.fixture(autouse=True)
def unit_tests_start_no_snakemake(request, monkeypatch):
    """A unit-tier test that starts Snakemake fails at once, naming the mark it lacks."""
    if any(request.node.get_closest_marker(mark) for mark in TIER_MARKS):
        return
    original = subprocess.Popen.__init__

    def refuse_snakemake(self, args, *rest, **kwargs):
        words = [str(a) for a in args] if isinstance(args, (list, tuple)) else str(args).split()
        if any(word == "snakemake" or word.endswith("/snakemake") for word in words):
            raise RuntimeError(f"{request.node.nodeid} starts Snakemake: mark it @pytest.mark.workflow")
        original(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", refuse_snakemake)


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Run:
    """The whole tiny pipeline, run once per session and shared by every workflow test module
    (about a minute on 2 cores); tests copy its workdir before changing anything. Under
    pytest-xdist the first worker to need it builds it in the folder all workers share, while
    the others wait for it."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # holds every worker's own base folder
    base, record = shared / "tiny_run", shared / "tiny_run.json"
    with open(shared / "tiny_run.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not record.exists():
            shutil.rmtree(base, ignore_errors=True)  # what a failed build left
            repo = copy_repo(base / "repo")
            (base / "cache").mkdir()
            start = time.monotonic()
            snakemake(base / "work", "--cache", repo=repo, env={"SNAKEMAKE_OUTPUT_CACHE": str(base / "cache")})
            record.write_text(json.dumps({"seconds": time.monotonic() - start}))
        seconds = json.loads(record.read_text())["seconds"]
    print(f"tiny pipeline run: {seconds:.0f} s")
    return Run(base / "repo", base / "work", base / "cache", seconds)
