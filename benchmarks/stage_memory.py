"""Peak memory of the predict, ensemble, tune and evaluate jobs against the number of images.

For each `--images` N it writes N validation images of 256 px (hard links to `--templates`
demo images of `cellseg.data.demo`, `--classes` classes, every image in the validation set of
`results/split/split.tsv`), then runs the workflow's own job scripts in the workflow's file
layout, each job in its own process so that its peak RSS (`ru_maxrss`) is its own:

    predict_fold.py (one job per fold)       results/predict/fold{k}/val/<id>.npz
    ensemble_folds.py                        results/ensemble/val/<id>.npz
    tune_thresholds.py (one job per point)   results/tune/<point>.json, <point>_trials.tsv
    collect_thresholds.py                    results/tune/thresholds.json
    evaluate_predictions.py                  results/evaluate/*.tsv

Each script runs as Snakemake would run it (`runpy`, with a `snakemake` object holding the
rule's input, output, params, log and threads, params taken from `config.yaml` as the rules
take them), after `cellseg.workflow.allocator.release_freed_memory()`. The only stand-in is the network:
`load_model_for_inference` returns `dark_blobs.DarkBlobDetector` (nuclei as connected
components of dark pixels, a slightly different darkness level per fold so that the folds
differ), whose memory is per tile, the same at any number of images. The tune stage is the
tune job of each operating point (`leaderboard`, `cells`) and the collect job; its peak is the
largest job's. The tune search is cut to one value per threshold (`--search small`, for both
operating points; `config` for config.yaml's grids: `tune` for leaderboard, `tune.cells` for
cells) because its memory depends on the predictions held, not on the number of trials.

`--baseline REV` also runs the tune and evaluate jobs of commit REV (its own scripts and
package, `git archive`, through its own copy of this script) on the same predictions, after
this code's, and says for each of this code's tune and evaluate files whether REV wrote the
same. REV from before the two operating points (one tuned point: `thresholds.json` holding
one point, score tables with a `tuned` row) is compared where the formats meet: its thresholds with the leaderboard point's `score_thresholds`,
`mask_thresholds`, `nms_threshold`, `metric` and `score`; its score tables on the rows and
columns both have, its `tuned` row as `leaderboard`; per_image.tsv not at all (scored at its
tuned point, here at the cells point). A REV with the two points must have this version of
this script (`--point`).
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
POINTS = ("leaderboard", "cells")  # cellseg.inference.operating_points.POINTS; the tune jobs, then "collect"
SINGLE_POINT_KEYS = ("score_thresholds", "mask_thresholds", "nms_threshold", "metric", "score")


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

    def items(self):
        return [(key, getattr(self, key)) for key in self._names]


def write_dataset(data: Path, n_images: int, n_templates: int, n_classes: int) -> list[str]:
    """`data/train/img00000`... hard-linked from 256 px demo images; no test images. Returns
    the ids."""
    from cellseg.data.demo import write_demo_dataset

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
    """Every image in the validation set, in `cellseg.data.split.make_split`'s columns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pd.DataFrame({"image_id": ids, "subset": "val", "fold": -1, "group": ids})
    table.to_csv(path, sep="\t", index=False)


def tune_settings(config: dict, point: str, search: str) -> dict:
    """The rule's `settings` param of one point (workflow/rules/tune.smk), `SMALL_SEARCH` with
    `search` small."""
    section = config["tune"]["cells"] if point == "cells" else config["tune"]
    keys = ("score_thresholds", "mask_thresholds", "nms_thresholds")
    return {"metric": section["metric"], "search": SMALL_SEARCH if search == "small" else {key: section[key] for key in keys}}


def job(stage: str, work: Path, config: dict, classes: list[str], folds: list[int], fold: int, search: str,
        point: str | None = None):  # fmt: skip
    """The `snakemake` object of one job, as the rule in workflow/rules/<stage>.smk builds it;
    `point`: the tune job's operating point (`POINTS`), or "collect"."""
    source = {"format": "reference", "path": str(work / "data"), "classes": classes}
    split = str(work / "results/split/split.tsv")
    fold_dirs = [str(work / f"results/predict/fold{k}/val") for k in folds]
    ens, ev = config["ensemble"], config["evaluate"]
    if stage == "predict":
        pr = config["predict"]
        predict = {key: pr[key] for key in ("tile_size", "overlap", "tta", "tta_fusion", "batch_size")}
        params = Named(train={}, source=source, classes=classes, train_tile_size=config["tiles"]["size"],
                       predict={**predict, "amp": pr["amp"] or "none"})  # fmt: skip
        inputs = Named(weights=f"fold{fold}.pt", split=split, images=[], stain=[])
        outputs, name = Named(fold_dirs[folds.index(fold)]), f"predict_fold{fold}"
    elif stage == "ensemble":
        fusion = {key: ens[key] for key in ("weights", "iou_thr", "skip_box_thr", "conf_type", "absent_as_zero")}
        params = Named(folds=folds, fusion=fusion)
        inputs = Named(folds=fold_dirs, calibration=[])
        outputs, name = Named(str(work / "results/ensemble/val")), "ensemble_folds"
    elif stage == "tune" and point == "collect":
        params = Named()
        inputs = Named(**{p: str(work / f"results/tune/{p}.json") for p in POINTS})
        outputs, name = Named(str(work / "results/tune/thresholds.json")), "collect_thresholds"
    elif stage == "tune":
        if point not in POINTS:
            raise ValueError(f"tune job: point {point!r}, expected one of {POINTS} or 'collect'")
        params = Named(source=source, classes=classes, settings=tune_settings(config, point, search),
                       max_dets=ev["max_dets"], evaluator=ev["evaluator"])  # fmt: skip
        inputs = Named(ensemble=str(work / "results/ensemble/val"), split=split, samples=[])
        outputs = Named(thresholds=str(work / f"results/tune/{point}.json"), trials=str(work / f"results/tune/{point}_trials.tsv"))
        name = "tune_thresholds"
    else:
        params = Named(source=source, classes=classes, folds=folds, max_dets=ev["max_dets"], evaluator=ev["evaluator"])
        inputs = Named(folds=fold_dirs, ensemble=str(work / "results/ensemble/val"),
                       thresholds=str(work / "results/tune/thresholds.json"), split=split, samples=[])  # fmt: skip
        outputs = Named(**{key: str(work / f"results/evaluate/{key}.tsv") for key in ("scores", "agnostic", "per_image", "pr_curve")})
        name = "evaluate_predictions"
    for path in outputs:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    log = work / "logs" / (f"{name}_{point}.log" if point in POINTS else f"{name}.log")
    snakemake = argparse.Namespace(
        input=inputs, output=outputs, params=params, log=Named(str(log)), threads=1,
        wildcards=Named(fold=str(fold), subset="val", point=point), resources=Named(gpu=0), scriptdir=str(SCRIPTS),
        config=config,
    )  # fmt: skip
    return f"{name}.py" if stage != "predict" else "predict_fold.py", snakemake


def run_stage(args) -> dict:
    """One job in this process: its seconds and peak RSS."""
    from cellseg.workflow.allocator import release_freed_memory

    release_freed_memory()  # as the predict_fold and segment_image jobs do
    if args.stage == "predict":  # the other jobs do not import torch
        from dark_blobs import DarkBlobDetector

        import cellseg.inference.predict

        level = 0.45 + 0.01 * args.fold  # folds that differ a little
        cellseg.inference.predict.load_model_for_inference = lambda *a, **k: DarkBlobDetector(level=level).eval()
    from cellseg.workflow.configuration import resolve_recipe

    config = resolve_recipe(yaml.safe_load((ROOT / "config.yaml").read_text()))
    classes = [f"class{k + 1}" for k in range(args.classes)]
    folds = list(range(args.folds))
    script, snakemake = job(args.stage, Path(args.work), config, classes, folds, args.fold, args.search, args.point)
    start = time.monotonic()
    runpy.run_path(str(SCRIPTS / script), init_globals={"snakemake": snakemake}, run_name="__main__")
    seconds = time.monotonic() - start
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"stage": args.stage, "fold": args.fold if args.stage == "predict" else None,
            "point": args.point if args.stage == "tune" else None,
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
        for job_args in _jobs(stage, args.folds):
            command = [sys.executable, __file__, "--stage", stage, *job_args, "--work", str(work),
                       "--folds", str(args.folds), "--classes", str(args.classes), "--search", args.search]  # fmt: skip
            out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            row = {"images": n, "code": "this", **json.loads(out.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.baseline:
        rows += run_baseline(args, n, work, base / "baseline", env)
    return rows


def _jobs(stage: str, folds: int, points: bool = True) -> list[list[str]]:
    """The job options of a stage: one job per fold (predict), per operating point and the
    collect job (tune; one job without `points`, a single-point baseline's), else one."""
    if stage == "predict":
        return [["--fold", str(fold)] for fold in range(folds)]
    if stage == "tune" and points:
        return [["--point", point] for point in (*POINTS, "collect")]
    return [[]]


def run_baseline(args, n: int, work: Path, tree: Path, env: dict) -> list[dict]:
    """The tune and evaluate jobs of commit `args.baseline` on this code's predictions; checks
    that their thresholds and scores equal this code's (which they overwrite)."""
    if not tree.exists():
        archive = subprocess.run(["git", "archive", "--format=tar", args.baseline, "benchmarks", "workflow", "src", "config.yaml"],
                                 cwd=ROOT, capture_output=True, check=True).stdout  # fmt: skip
        tree.mkdir()
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(tree, filter="data")
    points = (tree / "workflow/scripts/collect_thresholds.py").exists()  # REV has the two operating points
    if points and "--point" not in (tree / "benchmarks/stage_memory.py").read_text():
        raise SystemExit(f"--baseline {args.baseline}: it tunes two operating points, but its "
                         "benchmarks/stage_memory.py runs one tune job (no --point); choose another commit")  # fmt: skip
    results = work / "results"
    ours = {path: path.read_bytes() for path in [*sorted((results / "tune").glob("*")), *sorted((results / "evaluate").glob("*.tsv"))]}
    for path in ours:  # what REV does not write stays absent
        path.unlink()
    rows = []
    for stage in ("tune", "evaluate"):
        for job_args in _jobs(stage, args.folds, points):
            command = [sys.executable, str(tree / "benchmarks/stage_memory.py"), "--stage", stage, *job_args,
                       "--work", str(work), "--folds", str(args.folds), "--classes", str(args.classes),
                       "--search", args.search]  # fmt: skip
            out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
            row = {"images": n, "code": args.baseline, **json.loads(out.strip().splitlines()[-1])}
            print(json.dumps(row), flush=True)
            rows.append(row)
    for path, content in ours.items():
        print(f"{n} images: {path.relative_to(work)} {_compare(path, content, points, args.baseline)}", flush=True)
    return rows


def _compare(path: Path, ours: bytes, points: bool, rev: str) -> str:
    """How `path` (written by the baseline `rev`) compares with what this code wrote there:
    JSON equal, tables equal to 1e-12. `points`: the baseline has the two operating points;
    without them, the formats are compared where they meet (module doc)."""
    if not path.exists():
        return f"not written by {rev}"
    if path.suffix == ".json":
        theirs, mine = json.loads(path.read_text()), json.loads(ours)
        if path.name == "thresholds.json" and not points:
            same = {key: mine["leaderboard"][key] for key in SINGLE_POINT_KEYS} == {key: theirs.get(key) for key in SINGLE_POINT_KEYS}
            return f"(leaderboard point) {'equal to' if same else 'DIFFERS from'} {rev}'s single point"
        return f"{'equal to' if mine == theirs else 'DIFFERS from'} {rev}'s"
    if path.name == "per_image.tsv" and not points:
        return f"not comparable: at the cells point, {rev}'s at its tuned point"
    a, b = pd.read_csv(io.BytesIO(ours), sep="\t"), pd.read_csv(path, sep="\t")
    scope = ""
    if not points and "thresholds" in b:
        b["thresholds"] = b["thresholds"].replace("tuned", "leaderboard")
        keys = ["model", "thresholds"]
        shared = a[keys].merge(b[keys])
        columns = [c for c in a.columns if c in b.columns]
        a, b = (t.merge(shared)[columns].sort_values(keys, kind="stable").reset_index(drop=True) for t in (a, b))
        scope = f"(on the {len(shared)} rows and {len(columns)} columns both have) "
    try:
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=0, atol=1e-12)
    except AssertionError:
        return f"{scope}DIFFERS from {rev}'s"
    return f"{scope}equal to {rev}'s"


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
    parser.add_argument("--point", choices=[*POINTS, "collect"], help=argparse.SUPPRESS)
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
    for row in rows:  # the predict and tune stages' peak is their largest job's
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
