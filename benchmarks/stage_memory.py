"""Peak memory of the predict, ensemble, tune and evaluate jobs against the number of images.

For each `--images` N it writes N validation images of 256 px (hard links to `--templates`
demo images of `cellseg.demo`, `--classes` classes, every image in the validation set of
`results/split/split.tsv`), then runs the workflow's own job scripts in the workflow's file
layout, each job in its own process so that its peak RSS (`ru_maxrss`) is its own:

    predict_fold.py (one job per fold)  results/predict/fold{k}/val/<id>.npz
    ensemble_folds.py                   results/ensemble/val/<id>.npz
    tune_thresholds.py                  results/tune/thresholds.json, trials.tsv
    evaluate_predictions.py             results/evaluate/*.tsv

Each script runs as Snakemake would run it (`runpy`, with a `snakemake` object holding the
rule's input, output, params, log and threads, params taken from `config.yaml` as the rules
take them), after `cellseg.memory.release_freed_memory()`. The only stand-in is the network:
`load_model_for_inference` returns `dark_blobs.DarkBlobDetector` (nuclei as connected
components of dark pixels, a slightly different darkness level per fold so that the folds
differ), whose memory is per tile, the same at any number of images. The tune search is cut
to a few points (`--search small`; `config` for config.yaml's) because its memory depends on
the predictions held, not on the number of trials. `--baseline REV` also runs the tune and
evaluate jobs of commit REV (its own scripts and package, `git archive`) on the same predictions,
after this code's, and says whether both chose the same thresholds and wrote the same scores.
Run from the repository root, one thread:

    .venv/bin/python benchmarks/stage_memory.py --images 1000 10000 [--baseline REV]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import runpy
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"
sys.path.insert(0, str(ROOT / "src"))

SIZE = 256
STAGES = ("predict", "ensemble", "tune", "evaluate")
SMALL_SEARCH = {"score_thresholds": [0.5], "mask_thresholds": [0.5], "nms_thresholds": [1.0]}


class Named(list):
    """The part of Snakemake's `Namedlist` the scripts use: items, then named items (a list
    value is flattened into the items, as Snakemake does), `.name`, `keys()` and `get()`."""

    def __init__(self, *items, **named):
        super().__init__(items)
        for key, value in named.items():
            self.extend(value if isinstance(value, list) else [value])
            setattr(self, key, value)
        self._names = list(named)

    def keys(self):
        return list(self._names)

    def get(self, key, default=None):
        return getattr(self, key, default)


def write_dataset(data: Path, n_images: int, n_templates: int, n_classes: int) -> list[str]:
    """`data/train/img00000`... hard-linked from 256 px demo images; no test images. Returns
    the ids."""
    from cellseg.demo import write_demo_dataset

    templates_dir = data.parent / "templates"
    if not templates_dir.exists():
        write_demo_dataset(templates_dir, seed=0, n_train=n_templates + 1, n_test=0,
                           min_size=SIZE, max_size=SIZE, n_classes=n_classes)  # fmt: skip
    templates = sorted((templates_dir / "train").iterdir())[1:]  # the first is 256 x 576 px
    ids = [f"img{i:05d}" for i in range(n_images)]
    for i, image_id in enumerate(ids):
        folder = data / "train" / image_id
        folder.mkdir(parents=True)
        for path in templates[i % len(templates)].iterdir():
            os.link(path, folder / path.name)
    (data / "test_release").mkdir()
    (data / "test_image_name_to_ids.json").write_text("[]")
    return ids


def write_split(path: Path, ids: list[str]) -> None:
    """Every image in the validation set, in `cellseg.split.make_split`'s columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"image_id": ids, "subset": "val", "fold": -1, "group": ids})
    table.to_csv(path, sep="\t", index=False)


def job(stage: str, work: Path, config: dict, classes: list[str], folds: list[int], fold: int, search: str):
    """The `snakemake` object of one job, as the rule in workflow/rules/<stage>.smk builds it."""
    source = {"format": "reference", "path": str(work / "data"), "classes": classes}
    split = str(work / "results/split/split.tsv")
    fold_dirs = [str(work / f"results/predict/fold{k}/val") for k in folds]
    ens, ev, tune = config["ensemble"], config["evaluate"], config["tune"]
    if stage == "predict":
        pr = config["predict"]
        params = Named(train={}, source=source, classes=classes, train_tile_size=config["tiles"]["size"],
                       tile_size=pr["tile_size"], overlap=pr["overlap"], tta=pr["tta"], tta_fusion=pr["tta_fusion"],
                       batch_size=pr["batch_size"], amp=pr["amp"] or "none")  # fmt: skip
        inputs = Named(weights=f"fold{fold}.pt", split=split, images=[], stain=[])
        outputs, name = Named(fold_dirs[folds.index(fold)]), f"predict_fold{fold}"
    elif stage == "ensemble":
        params = Named(folds=folds, weights=ens["weights"], iou_thr=ens["iou_thr"], skip_box_thr=ens["skip_box_thr"],
                       conf_type=ens["conf_type"], absent_as_zero=ens["absent_as_zero"])  # fmt: skip
        inputs = Named(folds=fold_dirs, calibration=[])
        outputs, name = Named(str(work / "results/ensemble/val")), "ensemble_folds"
    elif stage == "tune":
        keys = ("score_thresholds", "mask_thresholds", "nms_thresholds")
        params = Named(source=source, classes=classes, metric=tune["metric"],
                       search=SMALL_SEARCH if search == "small" else {key: tune[key] for key in keys},
                       max_dets=ev["max_dets"], evaluator=ev["evaluator"])  # fmt: skip
        inputs = Named(ensemble=str(work / "results/ensemble/val"), split=split, samples=[])
        outputs = Named(thresholds=str(work / "results/tune/thresholds.json"), trials=str(work / "results/tune/trials.tsv"))
        name = "tune_thresholds"
    else:
        params = Named(source=source, classes=classes, folds=folds, max_dets=ev["max_dets"], evaluator=ev["evaluator"])
        inputs = Named(folds=fold_dirs, ensemble=str(work / "results/ensemble/val"),
                       thresholds=str(work / "results/tune/thresholds.json"), split=split, samples=[])  # fmt: skip
        outputs = Named(**{key: str(work / f"results/evaluate/{key}.tsv") for key in ("scores", "agnostic", "per_image", "pr_curve")})
        name = "evaluate_predictions"
    for path in outputs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    snakemake = argparse.Namespace(
        input=inputs, output=outputs, params=params, log=Named(str(work / f"logs/{name}.log")), threads=1,
        wildcards=Named(fold=str(fold), subset="val"), resources=Named(gpu=0), scriptdir=str(SCRIPTS), config=config,
    )  # fmt: skip
    return f"{name}.py" if stage != "predict" else "predict_fold.py", snakemake


def run_stage(args) -> dict:
    """One job in this process: its seconds and peak RSS."""
    from cellseg.memory import release_freed_memory

    release_freed_memory()  # as the predict_fold and segment_image jobs do
    if args.stage == "predict":  # the other jobs do not import torch
        import cellseg.predict
        from dark_blobs import DarkBlobDetector

        level = 0.45 + 0.01 * args.fold  # folds that differ a little
        cellseg.predict.load_model_for_inference = lambda *a, **k: DarkBlobDetector(level=level).eval()
    config = yaml.safe_load((ROOT / "config.yaml").read_text())
    classes = [f"class{k + 1}" for k in range(args.classes)]
    script, snakemake = job(args.stage, Path(args.work), config, classes, list(range(args.folds)), args.fold, args.search)
    start = time.monotonic()
    runpy.run_path(str(SCRIPTS / script), init_globals={"snakemake": snakemake}, run_name="__main__")
    seconds = time.monotonic() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stage": args.stage, "fold": args.fold if args.stage == "predict" else None,
            "seconds": round(seconds, 1), "peak_rss_mib": round(peak_mib)}  # fmt: skip


def run_size(args, n: int, base: Path) -> list[dict]:
    """Every stage's job at N images, one process at a time."""
    work = base / f"n{n}"
    start = time.monotonic()
    ids = write_dataset(work / "data", n, args.templates, args.classes)
    write_split(work / "results/split/split.tsv", ids)
    print(f"{n} images written in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    rows = []
    for stage in args.stages:
        for fold in range(args.folds) if stage == "predict" else [0]:
            command = [sys.executable, __file__, "--stage", stage, "--fold", str(fold), "--work", str(work),
                       "--folds", str(args.folds), "--classes", str(args.classes), "--search", args.search]  # fmt: skip
            out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            row = {"images": n, "code": "this", **json.loads(out.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.baseline:
        rows += run_baseline(args, n, work, base / "baseline", env)
    return rows


def run_baseline(args, n: int, work: Path, tree: Path, env: dict) -> list[dict]:
    """The tune and evaluate jobs of commit `args.baseline` on this code's predictions; checks
    that their thresholds and scores equal this code's (which they overwrite)."""
    if not tree.exists():
        archive = subprocess.run(["git", "archive", "--format=tar", args.baseline, "benchmarks", "workflow", "src", "config.yaml"],
                                 cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
        tree.mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    results = work / "results"
    ours = {path: path.read_bytes() for path in [results / "tune/thresholds.json", *sorted((results / "evaluate").glob("*.tsv"))]}
    rows = []
    for stage in ("tune", "evaluate"):
        command = [sys.executable, str(tree / "benchmarks/stage_memory.py"), "--stage", stage, "--work", str(work),
                   "--folds", str(args.folds), "--classes", str(args.classes), "--search", args.search]  # fmt: skip
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
        row = {"images": n, "code": args.baseline, **json.loads(out.strip().splitlines()[-1])}
        print(json.dumps(row), flush=True)
        rows.append(row)
    for path, content in ours.items():
        same = _same_output(path, content)
        print(f"{n} images: {path.relative_to(work)} {'equal to' if same else 'DIFFERS from'} {args.baseline}'s", flush=True)
    return rows


def _same_output(path: Path, ours: bytes) -> bool:
    """Whether `path` (written by the baseline) holds what this code wrote: JSON equal, tables
    equal to 1e-12."""
    if path.suffix == ".json":
        return json.loads(ours) == json.loads(path.read_text())
    a, b = pd.read_csv(io.BytesIO(ours), sep="\t"), pd.read_csv(path, sep="\t")
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-12)
    except AssertionError:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--folds", type=int, default=2, help="folds predicted and ensembled")
    parser.add_argument("--classes", type=int, default=2, help="demo classes (label files per image)")
    parser.add_argument("--templates", type=int, default=40, help="distinct demo images drawn")
    parser.add_argument("--search", choices=["small", "config"], default="small", help="tune search grid")
    parser.add_argument("--baseline", default=None, help="commit whose tune and evaluate jobs also run (see above)")
    parser.add_argument("--workdir", default=None, help="where the images and results are written (removed after)")
    parser.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--fold", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.stage:
        print(json.dumps(run_stage(args)))
        return
    base = Path(tempfile.mkdtemp(prefix="cellseg_stage_memory_", dir=args.workdir))
    try:
        rows = [row for n in args.images for row in run_size(args, n, base)]
    finally:
        shutil.rmtree(base, ignore_errors=True)
    peaks = {}
    for row in rows:  # the predict jobs' peak is the largest fold's
        key = (row["code"], row["stage"], row["images"])
        peaks[key] = max(peaks.get(key, (0, 0)), (row["peak_rss_mib"], row["seconds"]))
    small, large = min(args.images), max(args.images)
    print(f"| code | stage | peak RSS, {small:,} images | peak RSS, {large:,} images | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for code, stage in dict.fromkeys((code, stage) for code, stage, _ in peaks):
        (a, sa), (b, sb) = peaks[(code, stage, small)], peaks[(code, stage, large)]
        print(f"| {code} | {stage} | {a} MiB ({sa:.0f} s) | {b} MiB ({sb:.0f} s) | {b / a:.2f} |")


if __name__ == "__main__":
    main()
