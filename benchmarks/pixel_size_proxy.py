"""Does the pipeline segment a 20x-like slide with a model trained at 40x? A proxy on CoNSeP.

CoNSeP is scanned at 40x (about 0.25 µm/px). This benchmark writes a 20x-like copy of its test
set (`--out/data`): every test image and ground-truth mask downsampled by `--factor` (2), the
images' TIFF resolution tags stating 0.25 x factor µm/px. It then scores that copy with the
folds of a finished CoNSeP run (`--run`, trained on the original 40x images), twice, each in a
copy of the run's work directory (the folds are not retrained: `--touch` marks them and their
tuning up to date, and only the test set's prediction, ensemble and evaluation run):

- `with mpp`: `data.mpp: 0.25`, so the test images are resampled to the training pixel size
  before the network and their cells mapped back (`cellseg.common.pixel_size`);
- `without mpp`: `data.mpp: null` (today's behaviour): the network sees cells at half the
  size it learnt.

It prints the class-averaged mask AP50 at 100 detections (the leaderboard point) and the cells
point's PQ and bPQ of the original test set (the run's own scores) and of both copies, and writes them
to `--out/table.md`.

    .venv/bin/python benchmarks/pixel_size_proxy.py --run RUN --data ../shared/data/consep \\
        --config config.yaml benchmarks/ablation/consep.yaml benchmarks/ablation/cpu_budget.yaml \\
        --out pixel_size_proxy --cores 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile
import yaml
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = Path(sys.executable).with_name("snakemake")
TRAINING_MPP = 0.25


def downsampled_image(path: Path, factor: int) -> np.ndarray:
    image = tifffile.imread(path)
    height, width = image.shape[:2]
    return np.array(Image.fromarray(image).resize((width // factor, height // factor), Image.Resampling.BILINEAR))


def downsampled_labels(path: Path, factor: int) -> np.ndarray:
    """Instance labels at 1/factor: each output pixel takes the label at its centre."""
    labels = tifffile.imread(path)
    return labels[factor // 2 :: factor, factor // 2 :: factor]


def write_copy(data: Path, out: Path, factor: int) -> None:
    """The test set of `data` (reference layout) at 1/factor, its images stating their mpp."""
    mpp = TRAINING_MPP * factor
    (out / "test_release").mkdir(parents=True, exist_ok=True)
    for path in sorted((data / "test_release").glob("*.tif")):
        pixels_per_cm = 1e4 / mpp
        tifffile.imwrite(
            out / "test_release" / path.name, downsampled_image(path, factor), photometric="rgb",
            resolution=(pixels_per_cm, pixels_per_cm), resolutionunit="CENTIMETER",
        )  # fmt: skip
    listing = json.loads((data / "test_image_name_to_ids.json").read_text())
    for entry in listing if isinstance(listing, list) else listing.values():
        if isinstance(entry, dict):
            entry["height"], entry["width"] = entry["height"] // factor, entry["width"] // factor
    (out / "test_image_name_to_ids.json").write_text(json.dumps(listing))
    for folder in sorted((data / "test_gt").iterdir()):
        (out / "test_gt" / folder.name).mkdir(parents=True, exist_ok=True)
        for mask in folder.glob("*.tif"):
            tifffile.imwrite(out / "test_gt" / folder.name / mask.name, downsampled_labels(mask, factor))


def score(run: Path, workdir: Path, configs: list[Path], overrides: dict, cores: int) -> tuple[pd.DataFrame, float]:
    """The test scores of `run`'s folds in a copy of it at `workdir`, with `overrides`."""
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    for part in ("results", "logs"):
        shutil.copytree(run / part, workdir / part, symlinks=True)
    shutil.copytree(run / ".snakemake", workdir / ".snakemake", ignore=shutil.ignore_patterns("locks", "conda*"))
    for stale in ("results/predict/fold0/test", "results/predict/fold1/test", "results/ensemble/test", "results/evaluate"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    shutil.copy(ROOT / "config.yaml", workdir)  # the Snakefile's own configfile, read from the work directory
    (workdir / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    snakemake = [
        str(SNAKEMAKE), "--snakefile", str(ROOT / "Snakefile"), "--directory", str(workdir), "--cores", str(cores),
        "--configfile", *map(str, configs), str(workdir / "overrides.yaml"),
    ]  # fmt: skip
    start = time.monotonic()
    with open(workdir / "snakemake.log", "w") as log:
        # A copied dataset has new mtimes: mark the trained folds and their tuning up to date
        # (same files, same split) so that only the test set's prediction and scoring run.
        for extra in (["--touch", "--", "results/tune/thresholds.json"], ["--", "results/evaluate/test_scores.tsv"]):
            subprocess.run([*snakemake, *extra], check=True, stdout=log, stderr=subprocess.STDOUT)
    return pd.read_csv(workdir / "results/evaluate/test_scores.tsv", sep="\t"), time.monotonic() - start


def headline(scores: pd.DataFrame) -> dict:
    """AP50@100 at the leaderboard point, PQ and bPQ at the cells point of the tuned ensemble."""
    rows = scores[scores["model"] == "ensemble"].set_index("thresholds")
    return {"AP50@100": rows.loc["leaderboard", "AP50@100"], **rows.loc["cells", ["PQ", "bPQ"]].to_dict()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="work directory of a finished CoNSeP run")
    parser.add_argument("--data", type=Path, required=True, help="the CoNSeP folder (reference layout)")
    parser.add_argument("--config", type=Path, nargs="+", required=True, help="the run's config files, in order")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--factor", type=int, default=2)
    parser.add_argument("--cores", type=int, default=2)
    args = parser.parse_args()
    out, data, run = args.out.resolve(), args.data.resolve(), args.run.resolve()
    copy = out / "data"
    if not (copy / "test_image_name_to_ids.json").exists():
        write_copy(data, copy, args.factor)
    test = {"path": str(data), "test_path": str(copy), "test_gt": str(copy / "test_gt")}
    rows = {"original (40x)": headline(pd.read_csv(run / "results/evaluate/test_scores.tsv", sep="\t"))}
    for name, mpp in ((f"1/{args.factor} size, with mpp", TRAINING_MPP), (f"1/{args.factor} size, without mpp", None)):
        scores, seconds = score(run, out / name.split(", ")[1].replace(" ", "_"), args.config, {"data": {**test, "mpp": mpp}}, args.cores)
        rows[name] = {**headline(scores), "wall time (s)": round(seconds)}
    table = pd.DataFrame(rows).T
    table["AP50@100 / original"] = table["AP50@100"] / table.loc["original (40x)", "AP50@100"]
    text = table.to_markdown(floatfmt=".3f")
    print(text)
    (out / "table.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
