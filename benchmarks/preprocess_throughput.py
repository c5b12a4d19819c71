"""Time the preprocessing stages (split + maps + tiles) end to end through Snakemake, for
today's per-shard jobs and for the per-image jobs of an earlier commit, on the same images.

Writes `--templates` demo images of 256 x 256 px (RGBA LZW TIFFs, float64 masks, 4 classes;
`cellseg.data.demo`) and hard-links them into N training image folders (`img00000`, ...), so every
image costs the same work. For each (design, N) pair it runs, in a fresh workdir,

    snakemake --cores C --until split_dataset make_tiles   (train.aux_heads on: maps too)

and times the whole call (DAG building included). The per-image design is the workflow of
commit `--baseline` (`git archive`); the sharded one is this checkout's (copied first, so edits
during the run change nothing). Run from anywhere:

    .venv/bin/python benchmarks/preprocess_throughput.py [--small 500] [--large 10000] [--cores 2]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from dag import ROOT, SNAKEMAKE, snapshot

sys.path.insert(0, str(ROOT / "src"))

from cellseg.data.demo import write_demo_dataset  # noqa: E402

CLASSES = ["class1", "class2", "class3", "class4"]
SIZE = 256
# A commit from before issue 15, whose maps and tiles ran one job per image.
BASELINE = "8b70920"


def write_dataset(root: Path, n_images: int, n_templates: int) -> None:
    """N training folders hard-linked from `n_templates` 256 px demo images; no test images."""
    demo = root.parent / f"{root.name}_templates"
    if not demo.exists():
        write_demo_dataset(demo, seed=0, n_train=n_templates + 1, n_test=0, min_size=SIZE, max_size=SIZE)
    templates = sorted((demo / "train").iterdir())[1:]  # the first is 256 x 576 px
    for i in range(n_images):
        folder = root / "train" / f"img{i:05d}"
        folder.mkdir(parents=True)
        for path in templates[i % len(templates)].iterdir():
            os.link(path, folder / path.name)
    (root / "test_release").mkdir()
    (root / "test_image_name_to_ids.json").write_text("[]")


def baseline_snapshot(dest: Path, rev: str) -> Path:
    """The workflow files of commit `rev`, extracted to `dest`; returns its Snakefile."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", rev, "Snakefile", "config.yaml", "workflow", "envs", "src/cellseg"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout
    dest.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return dest / "Snakefile"


def run_preprocessing(snakefile: Path, data: Path, workdir: Path, cores: int, sharded: bool) -> tuple[float, int]:
    """Wall seconds of split + maps + tiles in a fresh `workdir`, and the jobs run."""
    override = workdir.with_suffix(".yaml")
    settings = {
        "data": {"source": "reference", "path": str(data)},
        "classes": CLASSES,
        "train": {"aux_heads": True},
    }
    override.write_text(json.dumps(settings))
    args = [
        str(SNAKEMAKE), "--snakefile", str(snakefile), "--directory", str(workdir),
        "--configfile", str(snakefile.with_name("config.yaml")), str(override),
        "--cores", str(cores), "--until", "split_dataset", "make_tiles",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{(proc.stdout + proc.stderr)[-4000:]}")
    jobs = len(re.findall(r"^Finished jobid", proc.stdout + proc.stderr, re.MULTILINE))
    tiles = list((workdir / "results" / "tiles").glob("*.tsv"))
    if sharded != any(p.name.startswith("shard_") for p in tiles):
        sys.exit(f"{snakefile}: unexpected tiles files {tiles[:3]}")
    return seconds, jobs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", type=int, default=500, help="images, both designs")
    parser.add_argument("--large", type=int, default=10_000, help="images, sharded design only (0: skip)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--templates", type=int, default=40, help="distinct images drawn")
    parser.add_argument("--baseline", default=BASELINE, help="commit of the per-image design")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cellseg_preprocess_"))
    try:
        designs = {
            "per image": (baseline_snapshot(tmp / "baseline", args.baseline), False),
            "per shard": (snapshot(tmp / "repo"), True),
        }
        runs = [("per image", args.small), ("per shard", args.small)]
        if args.large:
            runs.append(("per shard", args.large))
        rows = []
        for design, n in runs:
            data = tmp / f"data{n}"
            if not data.exists():
                write_dataset(data, n, args.templates)
            snakefile, sharded = designs[design]
            seconds, jobs = run_preprocessing(snakefile, data, tmp / f"work_{design.replace(' ', '_')}_{n}", args.cores, sharded)
            rows.append((design, n, jobs, seconds))
            print(f"{design:<10} {n:>6} images {jobs:>6} jobs {seconds:8.1f} s {n / seconds:8.1f} images/s", flush=True)
        small = {design: seconds for design, n, _, seconds in rows if n == args.small}
        print(f"\nsplit + maps + tiles, {SIZE} px images, {len(CLASSES)} classes, --cores {args.cores}")
        print(f"{'design':<10}{'images':>8}{'jobs':>8}{'wall s':>9}{'images/s':>10}")
        for design, n, jobs, seconds in rows:
            print(f"{design:<10}{n:>8}{jobs:>8}{seconds:9.1f}{n / seconds:10.1f}")
        print(f"per shard / per image at {args.small} images: {small['per image'] / small['per shard']:.1f}x the throughput")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
