"""Wall time of one image's `segment_region` jobs run one at a time against two at once.

A finished run's trained folds (`--run DIR`, a workdir of a finished pipeline run; without it
the tiny test pipeline, tests/configs/tiny.yaml, is run first in a scratch workdir) segment one
image made of the run's test images, mirrored alternately, that splits into exactly
`--regions` region jobs of `--region-blocks`² blocks of `--block` px. The region jobs are run
with `snakemake --cores 1` and then again (`--forcerun segment_region`) with `--cores N`, each
job on one thread (`resources.predict.cpus_per_task: 1`), and the wall times of the whole
`segment` target compared; the outputs of both runs must be the same. Run from the repository
root:

    PYTHONPATH=src python benchmarks/region_jobs.py --cores 1 2
"""

from __future__ import annotations

import argparse
import hashlib
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import yaml

REPO = Path(__file__).resolve().parents[1]


def snakemake(workdir: Path, configs: list[Path], cores: int, *args: str) -> float:
    """Run Snakemake on the checkout's Snakefile in `workdir`; its wall seconds."""
    command = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir),
               "--configfile", str(REPO / "config.yaml"), *map(str, configs), "--cores", str(cores), *args]  # fmt: skip
    start = time.monotonic()
    done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout[-4000:]}")
    return time.monotonic() - start


def write_image(path: Path, run: Path, height: int, width: int) -> None:
    """An RGB TIFF of `height` x `width` px tiled from the run's first test image, every other
    copy mirrored so that there are no seams."""
    from cellseg.common.images import read_image

    source = read_image(sorted((run / "results" / "demo" / "test_release").glob("*.tif"))[0])

    def mirrored(n: int, side: int) -> np.ndarray:
        piece, inside = np.divmod(np.arange(n), side)
        return np.where(piece % 2 == 0, inside, side - 1 - inside)

    image = source[mirrored(height, source.shape[0])[:, None], mirrored(width, source.shape[1])[None]]
    tifffile.imwrite(path, image, tile=(256, 256), photometric="rgb", compression="zlib")


def digest(folder: Path) -> str:
    """Of the label image's pixels and the cell table (labels.tif's OME-XML holds a fresh UUID)."""
    labels = tifffile.imread(folder / "labels.tif")
    return hashlib.sha256(labels.tobytes() + (folder / "cells.csv").read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="workdir of a finished run (default: run the tiny pipeline)")
    parser.add_argument("--configs", type=Path, nargs="*", default=[REPO / "tests/configs/tiny.yaml"],
                        help="the run's config files after config.yaml")
    parser.add_argument("--cores", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--regions", type=int, default=2, help="regions, side by side")
    parser.add_argument("--block", type=int, default=512)
    parser.add_argument("--region-blocks", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run = args.run
        if run is None:
            run = tmp / "run"
            print(f"tiny pipeline run: {snakemake(run, args.configs, max(args.cores)):.0f} s", flush=True)
        images = tmp / "images"
        images.mkdir()
        side = args.block * args.region_blocks
        write_image(images / "slide.tif", run, side, side * args.regions)
        settings = tmp / "regions.yaml"
        settings.write_text(yaml.safe_dump({
            "segment": {"block_size": args.block, "region_blocks": args.region_blocks, "tissue": False},
            "resources": {"predict": {"cpus_per_task": 1}},
        }))  # fmt: skip
        configs = [*args.configs, settings]
        target = ["segment", "--config", f"segment_images={images}"]
        outputs = run / "results" / "segment" / "slide"
        print(f"| cores | {args.regions} region jobs of {side}² px, wall s | × against {args.cores[0]} |")
        print("| --- | --- | --- |")
        first, reference = None, None
        for cores in args.cores:
            seconds = snakemake(run, configs, cores, *target, "--forcerun", "segment_region")
            regions = sorted((outputs / "regions").glob("*.npz"))
            assert len(regions) == args.regions, regions
            first = first or seconds
            print(f"| {cores} | {seconds:.1f} | {first / seconds:.2f} |", flush=True)
            reference = reference or digest(outputs)
            assert digest(outputs) == reference, "the outputs differ between the runs"


if __name__ == "__main__":
    main()
