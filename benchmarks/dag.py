"""Time Snakemake building the DAG on a synthetic dataset: a dry run, and a no-op run.

Writes N tiny training images in the reference layout (train/<id>/image.tif + class1.tif,
test_release/*.tif, test_image_name_to_ids.json) to a temporary folder, copies the workflow's
code beside it (so concurrent edits of the library cannot change the rules' code digests
between runs), then runs it from the repository root with `--directory <temp workdir>`, so
results/ and .snakemake/ of the repository are not touched:

- `snakemake -n` R times (median wall time; targets: < 5 s for 300 images x 5 folds, < 30 s
  for 10,000 images);
- `snakemake --touch` once (every output, listed by `--summary`, is created empty first: touch
  skips missing files), then `snakemake --cores 1` R times, which must report "Nothing to be done".

With `--profile-out FILE`, one more dry run runs under cProfile (stats written to FILE) and
the functions of most cumulative time are printed: what dominates DAG building.

`--configfile config.yaml <overrides>` is passed: the Snakefile's `configfile: "config.yaml"` is
resolved against the working directory, which `--directory` moves away from the repository.
Run from anywhere:

    .venv/bin/python benchmarks/dag.py [--images 300] [--folds 5] [--repeats 3] [--target 5]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
CLASSES = ["class1"]


def write_dataset(root: Path, n_train: int, n_test: int) -> None:
    """Tiny valid TIFFs: 8x8 RGBA uint8 images, one float64 class1 mask with one instance."""
    image = np.zeros((8, 8, 4), np.uint8)
    mask = np.zeros((8, 8), np.float64)
    mask[2:5, 2:5] = 1
    for i in range(n_train):
        folder = root / "train" / f"img{i:05d}"
        folder.mkdir(parents=True)
        tifffile.imwrite(folder / "image.tif", image)
        tifffile.imwrite(folder / "class1.tif", mask)
    (root / "test_release").mkdir()
    listing = []
    for i in range(n_test):
        name = f"test{i:03d}.tif"
        tifffile.imwrite(root / "test_release" / name, image)
        listing.append({"file_name": name, "id": i + 1, "height": 8, "width": 8})
    (root / "test_image_name_to_ids.json").write_text(json.dumps(listing))


def snapshot(dest: Path) -> Path:
    """Copy of the workflow's code (Snakefile, config, rules, scripts, envs, library) in `dest`.

    The timed runs use the copy: the rules pass a digest of the `cellseg` modules as a param,
    so an edit to the library during the benchmark would turn the no-op run into a real one.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    dest.mkdir()
    for name in ("Snakefile", "config.yaml"):
        shutil.copy2(ROOT / name, dest / name)
    for name in ("workflow", "envs", "src/cellseg"):
        shutil.copytree(ROOT / name, dest / name, ignore=ignore)
    return dest / "Snakefile"


def snakemake_args(snakefile: Path, data: Path, workdir: Path, folds: int) -> list[str]:
    """The snakemake command line, config overrides in a second config file.

    `--config key=value` is not used: Snakemake parses nested values such as
    `split={"folds": 5}` with YAML's BaseLoader, which makes 5 the string "5" (the schema then
    rejects it). A config file keeps the types.
    """
    override = workdir.parent / "override.yaml"
    override.write_text(
        json.dumps(
            {
                "data": {"source": "reference", "path": str(data)},
                "classes": CLASSES,
                "split": {"folds": folds},
            }
        )
    )
    return [
        str(SNAKEMAKE),
        "--snakefile", str(snakefile),
        "--directory", str(workdir),
        "--configfile", str(snakefile.with_name("config.yaml")), str(override),
    ]  # fmt: skip


def run(args: list[str]) -> tuple[float, str]:
    """Wall time of one snakemake call and its combined output; exits on failure."""
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}\n{output[-4000:]}")
    return seconds, output


def profile_dry_run(base: list[str], path: Path) -> None:
    """One dry run under cProfile, stats to `path`; prints the top functions by cumulative time."""
    run([sys.executable, "-m", "cProfile", "-o", str(path), *base, "-n"])
    pstats.Stats(str(path)).sort_stats("cumulative").print_stats(25)


def job_count(output: str) -> int | None:
    """Total job count of Snakemake's job stats table, None if there is none."""
    match = re.search(r"^total\s+(\d+)", output, re.MULTILINE)
    return int(match[1]) if match else None


def create_outputs(base: list[str], workdir: Path) -> int:
    """Create every planned output (empty), listed by `snakemake --summary`; returns the count.

    `snakemake --touch` only touches outputs that exist ("Output files not touched because
    they don't exist"), so they are made first: paths without a suffix are the workflow's
    directory() outputs (results/predict/fold*/<subset>, results/ensemble/<subset>).
    """
    proc = subprocess.run(base + ["--summary"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"snakemake --summary failed:\n{proc.stderr[-4000:]}")
    paths = [line.split("\t")[0] for line in proc.stdout.splitlines()[1:] if "\t" in line]
    for path in paths:
        target = workdir / path
        if target.suffix:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        else:
            target.mkdir(parents=True, exist_ok=True)
    return len(paths)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=300, help="training images")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each kind")
    parser.add_argument("--test-images", type=int, default=4, help="test images")
    parser.add_argument("--target", type=float, default=30, help="target seconds of a dry run and a no-op run")
    parser.add_argument("--profile-out", type=Path, help="also profile one dry run into this file")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cellseg_dag_"))
    try:
        data, workdir = tmp / "data", tmp / "work"
        workdir.mkdir()
        start = time.perf_counter()
        write_dataset(data, args.images, args.test_images)
        print(f"dataset: {args.images} images, {args.test_images} test images in {tmp} "
              f"({time.perf_counter() - start:.1f} s)")
        base = snakemake_args(snapshot(tmp / "repo"), data, workdir, args.folds)

        dry = [run(base + ["-n"]) for _ in range(args.repeats)]
        jobs = job_count(dry[0][1])
        if args.profile_out:
            profile_dry_run(base, args.profile_out)

        n_outputs = create_outputs(base, workdir)
        touch_s, _ = run(base + ["--touch", "--cores", "1"])

        # Check with a dry run first, so that a failed --touch never starts real jobs.
        _, output = run(base + ["-n"])
        if "Nothing to be done" not in output:
            sys.exit(f"after --touch, a dry run still plans jobs:\n{output[-4000:]}")
        noop = [run(base + ["--cores", "1"]) for _ in range(args.repeats)]
        for _, output in noop:
            if "Nothing to be done" not in output:
                sys.exit(f"the run after --touch was not a no-op:\n{output[-4000:]}")

        rows = [
            ("dry run (-n)", [s for s, _ in dry], f"{jobs} jobs"),
            ("touch (--touch)", [touch_s], f"once, {n_outputs} outputs"),
            ("no-op run", [s for s, _ in noop], "Nothing to be done"),
        ]
        print(f"\n{args.images} images x {args.folds} folds, {args.repeats} repeats "
              f"(median / min / max wall s)")
        print(f"{'run':<18}{'median':>8}{'min':>8}{'max':>8}  note")
        for name, times, note in rows:
            print(f"{name:<18}{statistics.median(times):8.2f}{min(times):8.2f}"
                  f"{max(times):8.2f}  {note}")
        for name, times, _ in (rows[0], rows[2]):
            verdict = "ok" if statistics.median(times) < args.target else "ABOVE"
            print(f"{name} target < {args.target:g} s: {verdict}")
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
