"""End-to-end tests of the Snakemake workflow on the tiny demo preset (tests/configs/tiny.yaml).

One tiny run (`finished_run`, session scope, conftest.py) is shared: it runs from a copy of the
repository (so tests may change that copy's code without touching the checkout) in a temporary workdir,
with `--cache` and a temporary SNAKEMAKE_OUTPUT_CACHE. Rerun-trigger tests dry-run (`-n`) a
copy of its workdir after one change and compare the exact set of scheduled jobs. Three tests
need runs of their own, kept small: a reference-format dataset of 5 images (one image added),
a second workdir filled from the output cache, and the config-error checks (which stop before
any job).
"""

from __future__ import annotations

import filecmp
import json
import re
import shutil
import subprocess
import time
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from workflow_helpers import (
    REPO,
    copy_repo,
    copy_workdir,
    job_fields,
    job_reasons,
    job_resources,
    parse_dry_run,
    rule_counts,
    scheduled_jobs,
    snakemake,
    snakemake_command,
    wildcard_values,
    write_config,
)

from cellseg.common.files import write_tiff
from cellseg.common.images import read_image
from cellseg.data.shards import shard_images
from cellseg.outputs.kaggle_csv import encode_runs

pytestmark = pytest.mark.workflow

FOLDS = [0, 1]
N_IMAGES = 8  # tiny.yaml: demo.n_train
DEMO_IDS = [f"demo_train_{i:03d}" for i in range(N_IMAGES)]
N_SHARDS = 4  # tiny.yaml: preprocess.shards
SHARDS = shard_images(DEMO_IDS, N_SHARDS)  # the maps and tiles jobs, one per shard


def shard_name(image: str) -> str:
    """The name of `image`'s shard, as in the files and the jobs' wildcards."""
    return next(iter(shard_images([image], N_SHARDS)))

TRAIN_OUTPUTS = [
    "model_best.pt",
    "model_last.pt",
    "history.csv",
    "curve.png",
    "train_summary.json",
]
FOLD_MODELS = [f"results/train/fold{k}/model_best.pt" for k in FOLDS]

# What follows a change to one operating point's tuning, to both (the tuning code), and to
# training. The cells point drives no COCO submission; the leaderboard point no overlays.
FROM_CELLS = {
    "tune_thresholds": 1,
    "collect_thresholds": 1,
    "evaluate_predictions": 1,
    "evaluate_test": 1,
    "plot_report": 1,
    "all": 1,
}
FROM_LEADERBOARD = {**FROM_CELLS, "make_submission": 1}
FROM_TUNE = {**FROM_LEADERBOARD, "tune_thresholds": 2}
FROM_TRAIN = {
    "train_fold": len(FOLDS),
    "predict_fold": 2 * len(FOLDS),  # val and test
    "ensemble_folds": 2,
    **FROM_TUNE,
}


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    """A private copy of the finished workdir, for dry runs after a change."""
    return copy_workdir(finished_run.workdir, tmp_path / "work")


# ------------------------------------------------------------------------------------------
# 1. End to end


@pytest.mark.slow
def test_tiny_run_writes_every_output(finished_run):
    results = finished_run.workdir / "results"
    split = pd.read_csv(results / "split" / "split.tsv", sep="\t")
    assert sorted(split["image_id"]) == DEMO_IDS
    val_ids = sorted(split.loc[split["subset"] == "val", "image_id"])
    assert val_ids and set(split.loc[split["subset"] == "train", "fold"]) == set(FOLDS)
    test_ids = ["demo_test_000", "demo_test_001"]

    tile_ids = set()
    for shard, images in SHARDS.items():
        with np.load(results / "maps" / f"shard_{shard}.npz") as maps:
            assert maps["image_ids"].tolist() == images
        assert (results / "tiles" / f"shard_{shard}.npz").is_file()
        tile_ids |= set(pd.read_csv(results / "tiles" / f"shard_{shard}.tsv", sep="\t")["image_id"])
    assert tile_ids == set(DEMO_IDS)
    for fold in FOLDS:
        for name in TRAIN_OUTPUTS:
            assert (results / "train" / f"fold{fold}" / name).is_file(), (fold, name)
        for subset, ids in (("val", val_ids), ("test", test_ids)):
            folder = results / "predict" / f"fold{fold}" / subset
            assert sorted(p.stem for p in folder.glob("*.npz")) == ids, (fold, subset)
    for subset, ids in (("val", val_ids), ("test", test_ids)):
        assert sorted(p.stem for p in (results / "ensemble" / subset).glob("*.npz")) == ids

    thresholds = json.loads((results / "tune" / "thresholds.json").read_text())
    assert list(thresholds) == ["leaderboard", "cells"]
    for name, point in thresholds.items():
        assert point == json.loads((results / "tune" / f"{name}.json").read_text())
        assert {"point", "score_thresholds", "mask_thresholds", "nms_threshold", "metric", "cross_check"} <= set(point)
        assert point["point"] == name and set(point["mask_thresholds"]) == set(point["score_thresholds"])
        assert "held_out" in point["cross_check"]
        assert (results / "tune" / f"{name}_trials.tsv").is_file()
    assert thresholds["leaderboard"]["metric"] == "AP" and thresholds["cells"]["metric"] == "PQ"

    scores = pd.read_csv(results / "evaluate" / "scores.tsv", sep="\t")
    rows = list(zip(scores["model"], scores["thresholds"]))
    assert rows == [
        ("fold 0", "default"),
        ("fold 1", "default"),
        ("ensemble", "default"),
        ("ensemble", "leaderboard"),
        ("ensemble", "cells"),
    ]
    for column in ("bPQ", "mPQ", "count_error", "count_ratio", "F1_class1", "count_error_class1"):
        assert column in scores.columns, column
    assert scores["AP"].between(0, 1).all()
    for column in ("AP50@100", "PQ", "SQ", "DQ", "AJI"):
        assert scores[column].between(0, 1).all(), column
    test_scores = pd.read_csv(results / "evaluate" / "test_scores.tsv", sep="\t")
    assert list(zip(test_scores["model"], test_scores["thresholds"])) == rows
    for name in ("scores_agnostic", "test_scores_agnostic"):
        agnostic = pd.read_csv(results / "evaluate" / f"{name}.tsv", sep="\t")
        assert list(zip(agnostic["model"], agnostic["thresholds"])) == rows
        assert set(agnostic.columns) < set(scores.columns) and "AP_class1" not in agnostic.columns
        assert agnostic["AP50@100"].between(0, 1).all()
    assert list(test_scores.columns) == list(scores.columns)
    assert test_scores["AP"].between(0, 1).all() and not test_scores["AP"].equals(scores["AP"])

    with zipfile.ZipFile(results / "submission" / "submission.zip") as archive:
        assert archive.namelist() == ["test-results.json"]
        assert json.loads(archive.read("test-results.json")) == json.loads(
            (results / "submission" / "test-results.json").read_text()
        )
    for name in ("per_class_ap", "pr_curve", "best_image", "worst_image"):
        png = results / "report" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    logs = finished_run.workdir / "logs"
    assert (logs / "train" / "fold0.log").is_file()
    assert (logs / "maps" / f"shard_{next(iter(SHARDS))}.log").is_file()


@pytest.mark.slow
def test_finished_run_schedules_nothing(finished_run, tmp_path):
    """Nothing to do in the run's workdir, in a copy of it, and from another repository copy
    (the recorded params, code digests and timestamps do not depend on either path)."""
    assert scheduled_jobs(finished_run.workdir, repo=finished_run.repo) == Counter()
    workdir = copy_workdir(finished_run.workdir, tmp_path / "work")
    other_repo = copy_repo(tmp_path / "repo", finished_run.repo)
    assert scheduled_jobs(workdir, repo=other_repo) == Counter()


@pytest.mark.slow
def test_report_builds(finished_run, tmp_path):
    report = tmp_path / "report.html"
    workdir = copy_workdir(finished_run.workdir, tmp_path / "work")
    snakemake(workdir, "--report", str(report), repo=finished_run.repo)
    html = report.read_text(errors="replace")
    assert len(html) > 10_000 and "<html" in html.lower()


# ------------------------------------------------------------------------------------------
# 2. Lint


def test_lint_reports_nothing(tmp_path):
    proc = snakemake(tmp_path, "--lint")
    assert "Lints for rule" not in proc.stdout, proc.stdout
    assert "Lints for snakefile" not in proc.stdout, proc.stdout
    assert "Congratulations" in proc.stdout, proc.stdout


# ------------------------------------------------------------------------------------------
# 3. Rerun triggers: the exact jobs a dry run schedules after one change


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, expected, per_shard",
    [
        pytest.param({"tune": {"mask_thresholds": [0.4]}}, FROM_LEADERBOARD, [], id="tune"),
        pytest.param({"tune": {"metric": "PQ"}}, FROM_LEADERBOARD, [], id="tune-metric"),
        pytest.param({"tune": {"cells": {"metric": "F1"}}}, FROM_CELLS, [], id="tune-cells-metric"),
        pytest.param({"train": {"lr": 0.0005}}, FROM_TRAIN, [], id="train"),
        # Without aux heads nothing reads the maps: no maps job, tiles with empty maps.
        pytest.param({"train": {"aux_heads": False}}, {"make_tiles": len(SHARDS), **FROM_TRAIN}, ["make_tiles"], id="no-aux-heads"),
        pytest.param({"train": {"ema_decay": 0.9}}, FROM_TRAIN, [], id="train-ema"),
        pytest.param(
            {"ensemble": {"calibrate": "quantile"}}, {"calibrate_folds": 1, "ensemble_folds": 2, **FROM_TUNE}, [],
            id="ensemble-calibrate",
        ),
        pytest.param({"train": {"repeat_factor_threshold": 0.5}}, FROM_TRAIN, [], id="train-repeat-factor"),
        pytest.param({"train": {"copy_paste": 0.5}}, FROM_TRAIN, [], id="train-copy-paste"),
        pytest.param(
            {"split": {"group_by": r"^demo_train_00(\d)"}}, {"split_dataset": 1, **FROM_TRAIN}, [], id="split-group-by"
        ),
        pytest.param(
            {"tiles": {"min_instance_area": 4}},
            {"make_tiles": len(SHARDS), **FROM_TRAIN},
            ["make_tiles"],
            id="tiles",
        ),
        pytest.param(
            {"maps": {"center_sigma": 3.0}},
            {"compute_maps": len(SHARDS), "make_tiles": len(SHARDS), **FROM_TRAIN},
            ["compute_maps", "make_tiles"],
            id="maps",
        ),
        # Stain normalisation: the target's fit, then every stage that reads pixels for the
        # model; not the split, nor the maps (from masks only).
        pytest.param(
            {"stain": {"method": "macenko"}},
            {"fit_stain_reference": 1, "make_tiles": len(SHARDS), **FROM_TRAIN},
            ["make_tiles"],
            id="stain-method",
        ),
        pytest.param({"train": {"stain_jitter": 0.1}}, FROM_TRAIN, [], id="train-stain-jitter"),
        # the model records its pixel size, and prediction resamples to it: no split or tiles
        pytest.param({"data": {"mpp": 0.5}}, FROM_TRAIN, [], id="data-mpp"),
    ],
)
def test_config_change_reruns_its_stage_onward(
    finished_run, run_copy, tmp_path, override, expected, per_shard
):
    extra = write_config(tmp_path / "override.yaml", override)
    jobs = scheduled_jobs(run_copy, repo=finished_run.repo, configs=[extra])
    assert rule_counts(jobs) == expected
    for rule in per_shard:
        assert wildcard_values(jobs, rule, "shard") == set(SHARDS)
    if "train_fold" in expected:
        assert wildcard_values(jobs, "train_fold", "fold") == {str(k) for k in FOLDS}


@pytest.mark.slow
def test_test_set_of_another_dataset_reruns_only_the_test_stages(finished_run, run_copy, tmp_path):
    """Pointing the test set at another dataset, labelled with other classes (one, where the
    model has four), re-runs the test predictions, the test ensemble, the test scores and the
    submission: no split, tiles or training. Run, the test set is scored class-agnostically
    only, and the submission lists the new test images."""
    from cellseg.data.demo import write_demo_dataset

    other = tmp_path / "other"
    write_demo_dataset(other, seed=1, n_train=2, n_test=2, min_size=40, max_size=80, n_classes=1)
    test_set = {"test_path": str(other), "test_gt": str(other / "test_gt"), "test_classes": ["class1"]}
    extra = write_config(tmp_path / "test_set.yaml", {"data": test_set})
    jobs = scheduled_jobs(run_copy, repo=finished_run.repo, configs=[extra])
    assert rule_counts(jobs) == {
        "predict_fold": len(FOLDS), "ensemble_folds": 1, "evaluate_test": 1, "make_submission": 1, "all": 1,
    }  # fmt: skip
    assert wildcard_values(jobs, "predict_fold", "subset") == {"test"}
    assert wildcard_values(jobs, "ensemble_folds", "subset") == {"test"}

    snakemake(run_copy, repo=finished_run.repo, configs=[extra])
    results = run_copy / "results"
    agnostic = pd.read_csv(results / "evaluate" / "test_scores_agnostic.tsv", sep="\t")
    assert len(agnostic) == len(FOLDS) + 3 and agnostic["AP50@100"].between(0, 1).all()
    assert not [c for c in agnostic.columns if c.endswith("_class1")]
    assert "class-agnostic scores only" in (run_copy / "logs" / "evaluate" / "evaluate_test.log").read_text()
    id_map = json.loads((other / "test_image_name_to_ids.json").read_text())
    submitted = json.loads((results / "submission" / "test-results.json").read_text())
    assert {r["image_id"] for r in submitted} <= {e["id"] for e in id_map}
    assert sorted(p.stem for p in (results / "ensemble" / "test").glob("*.npz")) == sorted(
        Path(e["file_name"]).stem for e in id_map
    )


@pytest.mark.slow
def test_cells_settings_rerun_no_training_prediction_or_submission(finished_run, run_copy, tmp_path):
    """Changing only the cells point's search re-runs its tuning and what reads it: no training,
    no predict_fold, and the COCO submission keeps its bytes."""
    override = {"tune": {"cells": {"score_thresholds": [0.1, 0.9], "nms_thresholds": [0.2]}}}
    extra = write_config(tmp_path / "override.yaml", override)
    jobs = scheduled_jobs(run_copy, repo=finished_run.repo, configs=[extra])
    assert rule_counts(jobs) == FROM_CELLS
    assert wildcard_values(jobs, "tune_thresholds", "point") == {"cells"}
    submission = (run_copy / "results" / "submission" / "submission.zip").read_bytes()
    before = json.loads((run_copy / "results" / "tune" / "thresholds.json").read_text())
    snakemake(run_copy, repo=finished_run.repo, configs=[extra])
    after = json.loads((run_copy / "results" / "tune" / "thresholds.json").read_text())
    assert after["leaderboard"] == before["leaderboard"]
    assert after["cells"]["nms_threshold"] == 0.2
    assert (run_copy / "results" / "submission" / "submission.zip").read_bytes() == submission


@pytest.mark.slow
def test_kaggle_csv_is_one_more_job_with_the_cells_points_masks(finished_run, run_copy, tmp_path):
    from cellseg.common.instances import load_instance_sets
    from cellseg.inference.operating_points import at_point, read_point

    extra = write_config(tmp_path / "override.yaml", {"submission": {"kaggle_csv": "row_major"}})
    jobs = scheduled_jobs(run_copy, repo=finished_run.repo, configs=[extra])
    assert rule_counts(jobs) == {"make_kaggle_csv": 1, "all": 1}
    snakemake(run_copy, repo=finished_run.repo, configs=[extra])
    results = run_copy / "results"
    rows = pd.read_csv(results / "submission" / "submission.csv", keep_default_na=False)
    names = ["demo_test_000", "demo_test_001"]  # the demo's id map
    assert set(rows["id"]) == set(names)
    cells = read_point(results / "tune" / "cells.json")
    for name, found in zip(names, at_point(load_instance_sets(results / "ensemble" / "test", names).values(), cells)):
        masks = found.binary_masks(0.5)
        assert (masks.sum(axis=0) <= 1).all()  # Kaggle's metrics want one cell per pixel
        expected = sorted(encode_runs(mask, "row_major") for mask in masks) or [""]
        assert sorted(rows.loc[rows["id"] == name, "predicted"]) == expected


@pytest.mark.slow
def test_int8_backend_quantises_each_fold_on_its_training_images_and_predicts_with_it(
    finished_run, run_copy, tmp_path
):
    """predict.backend: onnxruntime-int8 adds one quantise_fold job per fold and re-runs the
    prediction onward, not training; each fold is calibrated on images it trained on."""
    extra = write_config(tmp_path / "override.yaml", {"predict": {"backend": "onnxruntime-int8"}})
    jobs = scheduled_jobs(run_copy, repo=finished_run.repo, configs=[extra])
    counts = rule_counts(jobs)
    assert counts.pop("quantise_fold") == len(FOLDS) and "train_fold" not in counts
    assert counts == {key: value for key, value in FROM_TRAIN.items() if key != "train_fold"}
    snakemake(run_copy, "results/predict/fold0/test", repo=finished_run.repo, configs=[extra])
    results = run_copy / "results"
    assert (results / "export" / "fold0.int8.onnx").stat().st_size > 0
    split = pd.read_csv(results / "split" / "split.tsv", sep="\t")
    fold0_trained_on = set(split.loc[(split["subset"] == "train") & (split["fold"] != 0), "image_id"])
    logged = re.search(r"calibrating on \d+ training images: (.*)", (run_copy / "logs/export/fold0_int8.log").read_text())
    assert logged and set(logged.group(1).split(", ")) == fold0_trained_on
    torch_run = finished_run.workdir / "results" / "predict" / "fold0" / "test"
    for name in ("demo_test_000", "demo_test_001"):
        with np.load(torch_run / f"{name}.npz") as before, np.load(results / "predict/fold0/test" / f"{name}.npz") as after:
            assert not np.array_equal(before["scores"], after["scores"])  # another network ran


@pytest.mark.slow
@pytest.mark.parametrize(
    "changed, expected",
    [
        # A library module imported by the tune, evaluate, submission and report scripts only.
        pytest.param("src/cellseg/inference/operating_points.py", FROM_TUNE, id="library-postprocess"),
        pytest.param("workflow/scripts/tune_thresholds.py", FROM_TUNE, id="script-tune"),
        # The maps module: compute_maps onward (make_tiles does not import it).
        pytest.param(
            "src/cellseg/data/target_maps.py",
            {"compute_maps": len(SHARDS), "make_tiles": len(SHARDS), **FROM_TRAIN},
            id="library-maps",
        ),
    ],
)
def test_code_change_reruns_its_rules_onward(finished_run, run_copy, tmp_path, changed, expected):
    repo = copy_repo(tmp_path / "repo", finished_run.repo)
    with open(repo / changed, "a") as source:
        source.write("\n# a change that a code digest must notice\n")
    jobs = scheduled_jobs(run_copy, repo=repo)
    assert rule_counts(jobs) == expected


@pytest.mark.slow
def test_training_only_change_leaves_predicts_own_trigger_alone(finished_run, run_copy, tmp_path):
    """A change to a module only training imports re-runs train_fold through its code digest;
    predict_fold re-runs after it only because its input (the model) changes, never through its
    own digest (its script imports nothing of the training stack)."""
    repo = copy_repo(tmp_path / "repo", finished_run.repo)
    with open(repo / "src" / "cellseg" / "data" / "augment.py", "a") as source:
        source.write("\n# a training-only change\n")
    proc = snakemake(run_copy, "--dry-run", repo=repo)
    reasons = job_reasons(proc.stdout)
    assert rule_counts(parse_dry_run(proc.stdout)) == FROM_TRAIN
    for (rule, _), reason in reasons.items():
        if rule == "train_fold":
            assert "Params have changed" in reason, reason
        if rule == "predict_fold":
            assert "Input files updated by another job" in reason and "Params" not in reason, reason


def test_stain_target_is_fitted_once_and_the_tiles_are_normalised_with_it(tmp_path):
    """stain.method macenko: one job fits the target on a training image; an image's tiles
    (in its shard's file) hold its normalised pixels."""
    from cellseg.data.dataset import load_sample
    from cellseg.data.stain import StainNormaliser, StainTarget
    from cellseg.data.tiles import load_tile, make_tiles

    extra = write_config(tmp_path / "stain.yaml", {"stain": {"method": "macenko"}})
    workdir = tmp_path / "work"
    image = DEMO_IDS[0]
    tiles = f"results/tiles/shard_{shard_name(image)}"
    jobs = rule_counts(scheduled_jobs(workdir, f"{tiles}.npz", configs=[extra]))
    assert jobs["fit_stain_reference"] == 1 and jobs["make_tiles"] == 1
    snakemake(workdir, f"{tiles}.npz", configs=[extra])
    target = StainTarget.read(workdir / "results" / "stain" / "reference.json")
    assert target.method == "macenko" and target.reference in DEMO_IDS
    classes = ["class1", "class2", "class3", "class4"]
    sample = load_sample({"format": "reference", "path": str(workdir / "results" / "demo"), "classes": classes}, image)
    empty = np.zeros(sample.image.shape[:2])

    def first_tile(pixels):
        return make_tiles(pixels, sample.labels, empty, empty, 128, 32, True, 8, image_id=image, class_names=classes)[0][0]["image"]

    index = pd.read_csv(workdir / f"{tiles}.tsv", sep="\t")
    written = load_tile(workdir / f"{tiles}.npz", index.loc[index["image_id"] == image, "tile"].iloc[0])["image"]
    np.testing.assert_array_equal(written, first_tile(StainNormaliser(target)(sample.image)))
    assert not np.array_equal(written, first_tile(sample.image))


def test_unfittable_stain_reference_fails_in_one_line(tmp_path):
    from PIL import Image

    white = tmp_path / "white.png"
    Image.new("RGB", (64, 64), "white").save(white)
    extra = write_config(tmp_path / "stain.yaml", {"stain": {"method": "macenko", "reference": str(white)}})
    workdir = tmp_path / "work"
    proc = snakemake(workdir, "results/stain/reference.json", configs=[extra], check=False)
    assert proc.returncode != 0
    line = f"ERROR: {white}: cannot fit a stain reference: no colour contrast"
    assert line in proc.stdout, proc.stdout
    assert line in (workdir / "logs" / "stain" / "fit_stain_reference.log").read_text()
    assert not (workdir / "results" / "stain" / "reference.json").exists()


def test_jobs_run_the_library_of_their_own_checkout(tmp_path):
    """A job imports `cellseg` from its own checkout's src/, not from wherever the package is
    installed (the venv holds this checkout's, editable): a copied repository whose make_split
    fails with a marker must fail with it."""
    repo = copy_repo(tmp_path / "repo")
    with open(repo / "src" / "cellseg" / "data" / "split.py", "a") as source:
        source.write('\n\ndef make_split(*args, **kwargs):\n    raise RuntimeError("the copied checkout\'s library")\n')
    workdir = tmp_path / "work"
    proc = snakemake(workdir, "results/split/split.tsv", repo=repo, check=False)
    assert proc.returncode != 0, proc.stdout
    assert "the copied checkout's library" in (workdir / "logs" / "split" / "split_dataset.log").read_text()


@pytest.mark.slow
def test_added_or_changed_image_reaches_only_its_shards_maps_and_tiles(finished_run, tmp_path):
    """A reference-format dataset of 5 demo images (4 shards), run through training. Adding a
    sixth image folder, in a shard that holds an image already, must re-split, compute the maps
    and tiles of that shard only, and retrain onward; so must changing one image's file.
    (The first run stops after training to save time: the stages after it are scheduled either
    way, so the expected set is the same as after a full run; removing the added image again
    schedules what was scheduled before it.)"""
    demo = finished_run.workdir / "results" / "demo"
    data = tmp_path / "data"
    first = DEMO_IDS[:5]
    for image in first:
        shutil.copytree(demo / "train" / image, data / "train" / image)
    shutil.copytree(demo / "test_release", data / "test_release")
    shutil.copy2(demo / "test_image_name_to_ids.json", data)
    config = write_config(
        tmp_path / "reference.yaml", {"data": {"source": "reference", "path": str(data)}}
    )
    workdir = tmp_path / "work"
    snakemake(workdir, *FOLD_MODELS, repo=finished_run.repo, configs=[config])
    after_training = scheduled_jobs(workdir, repo=finished_run.repo, configs=[config])
    without_test_truth = {rule: n for rule, n in FROM_TRAIN.items() if rule != "evaluate_test"}
    expected = {
        "split_dataset": 1,
        "compute_maps": 1,
        "make_tiles": 1,
        **without_test_truth,  # this dataset has no data.test_gt
    }
    occupied = {shard_name(image) for image in first}

    new = next(image for image in DEMO_IDS[5:] if shard_name(image) in occupied)
    shutil.copytree(demo / "train" / new, data / "train" / new)
    jobs = scheduled_jobs(workdir, repo=finished_run.repo, configs=[config])
    assert rule_counts(jobs) == expected
    for rule in ("compute_maps", "make_tiles"):
        assert wildcard_values(jobs, rule, "shard") == {shard_name(new)}

    shutil.rmtree(data / "train" / new)
    assert scheduled_jobs(workdir, repo=finished_run.repo, configs=[config]) == after_training
    changed = first[0]
    image = data / "train" / changed / "image.tif"
    pixels = read_image(image)
    pixels[0, 0] ^= 1  # new content: Snakemake skips a newer file whose checksum is unchanged
    write_tiff(image, pixels)
    jobs = scheduled_jobs(workdir, repo=finished_run.repo, configs=[config])
    assert rule_counts(jobs) == expected
    for rule in ("compute_maps", "make_tiles"):
        assert wildcard_values(jobs, rule, "shard") == {shard_name(changed)}


def test_preprocessing_jobs_are_bounded_by_the_shard_count(tmp_path):
    """40 images with preprocess.shards 4 (tiny.yaml) and the aux heads: 4 maps and 4 tiles
    jobs, each one SLURM submission under profiles/slurm (a `rule`, not a `localrule`; dry
    run, no cluster needed), where per-image jobs would be 40 + 40."""
    import tifffile

    data = tmp_path / "data"
    for i in range(40):
        folder = data / "train" / f"img{i:02d}"
        folder.mkdir(parents=True)
        tifffile.imwrite(folder / "image.tif", np.zeros((8, 8, 3), np.uint8))
        tifffile.imwrite(folder / "class1.tif", np.eye(8))
    (data / "test_release").mkdir()
    (data / "test_image_name_to_ids.json").write_text("[]")  # no test images
    config = write_config(tmp_path / "data.yaml", {"data": {"source": "reference", "path": str(data)}, "classes": ["class1"]})
    proc = snakemake(tmp_path / "work", "--profile", str(REPO / "profiles" / "slurm"), "--dry-run", configs=[config])
    submitted = Counter(re.findall(r"^rule (compute_maps|make_tiles):$", proc.stdout, re.MULTILINE))
    assert submitted == {"compute_maps": N_SHARDS, "make_tiles": N_SHARDS}, proc.stdout[-3000:]
    assert "localrule compute_maps" not in proc.stdout and "localrule make_tiles" not in proc.stdout


@pytest.mark.slow
def test_cascade_box_head_trains_resumes_predicts_ensembles_and_submits(finished_run, run_copy, tmp_path):
    """`train.box_head: cascade` re-runs training onward (the resolved train config is a param
    of train_fold, so it is part of the output cache's key too) and runs through tiled
    prediction with TTA, the WBF ensemble, tuning and the submission. Then fold 0's training,
    killed after its first checkpoint, resumes in the next run to the uninterrupted weights."""
    import psutil  # a dependency of Snakemake
    import torch

    extra = write_config(tmp_path / "cascade.yaml", {"train": {"box_head": "cascade"}})
    assert rule_counts(scheduled_jobs(run_copy, repo=finished_run.repo, configs=[extra])) == FROM_TRAIN
    snakemake(run_copy, repo=finished_run.repo, configs=[extra])
    results = run_copy / "results"
    fold0 = results / "train" / "fold0"
    uninterrupted = torch.load(fold0 / "model_last.pt", weights_only=True)
    assert any(key.startswith("roi_heads.refine.") for key in uninterrupted)
    scores = pd.read_csv(results / "evaluate" / "scores.tsv", sep="\t")
    assert len(scores) == len(FOLDS) + 3 and scores["AP"].between(0, 1).all()
    with zipfile.ZipFile(results / "submission" / "submission.zip") as archive:
        assert archive.namelist() == ["test-results.json"]

    for path in fold0.iterdir():
        path.unlink()
    target = "results/train/fold0/model_last.pt"
    command = snakemake_command(run_copy, target, repo=finished_run.repo, configs=[extra])
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    while not (fold0 / "checkpoint.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    jobs = [p for p in psutil.Process(process.pid).children(recursive=True) if "train_fold" in " ".join(p.cmdline())]
    assert len(jobs) == 1, "the training job ended before it could be killed"
    jobs[0].kill()
    output, _ = process.communicate(timeout=600)
    assert process.returncode != 0 and not (fold0 / "model_last.pt").exists(), output[-3000:]
    snakemake(run_copy, target, repo=finished_run.repo, configs=[extra])
    summary = json.loads((fold0 / "train_summary.json").read_text())
    assert 0 < summary["resumed_from_step"] < summary["steps"]
    resumed = torch.load(fold0 / "model_last.pt", weights_only=True)
    assert [k for k in uninterrupted if not torch.equal(resumed[k], uninterrupted[k])] == []


# ------------------------------------------------------------------------------------------
# 4. Output cache


@pytest.mark.slow
def test_second_workdir_takes_trained_folds_from_the_cache(finished_run, tmp_path):
    """The shared run stored each fold's outputs, and the split, maps and tiles, under
    SNAKEMAKE_OUTPUT_CACHE; a fresh workdir with the same config takes all of them from there
    and trains no fold."""
    stored = sorted(p.name for p in finished_run.cache.iterdir())
    hashes = {name.rsplit("_", 1)[0] for name in stored if name.endswith("_best.pt")}
    assert len(hashes) == len(FOLDS), f"one cache entry per fold expected: {stored}"
    assert len([n for n in stored if n.rsplit("_", 1)[0] in hashes]) == len(FOLDS) * len(TRAIN_OUTPUTS)

    workdir = tmp_path / "work"
    proc = snakemake(
        workdir, "--cache", *FOLD_MODELS, repo=finished_run.repo, env=finished_run.env
    )
    shard = next(iter(SHARDS))
    for path in ["results/split/split.tsv", f"results/maps/shard_{shard}.npz", f"results/tiles/shard_{shard}.tsv"]:
        assert f"Symlinking output file {path} from cache" in proc.stdout
    for fold in FOLDS:
        assert f"Symlinking output file results/train/fold{fold}/model_best.pt from cache" in (
            proc.stdout
        )
        # Snakemake creates the job's log file, but nothing writes to it: no training ran.
        log = workdir / "logs" / "train" / f"fold{fold}.log"
        assert not log.exists() or log.stat().st_size == 0, log.read_text()
    for fold in FOLDS:
        for name in TRAIN_OUTPUTS:
            mine = workdir / "results" / "train" / f"fold{fold}" / name
            first = finished_run.workdir / "results" / "train" / f"fold{fold}" / name
            assert filecmp.cmp(mine, first, shallow=False), (fold, name)
    a, b = (workdir / model for model in FOLD_MODELS)
    assert not filecmp.cmp(a, b, shallow=False), "both folds got the same cached model"
    assert scheduled_jobs(workdir, *FOLD_MODELS, repo=finished_run.repo) == Counter()


# ------------------------------------------------------------------------------------------
# 5. Config and data errors stop before any job


def _assert_failed_before_jobs(proc, workdir: Path, *expected: str):
    assert proc.returncode != 0, proc.stdout
    for text in expected:
        assert text in proc.stdout, (text, proc.stdout)
    assert "Finished jobid" not in proc.stdout
    assert not (workdir / "results").exists()
    assert not (workdir / "logs").exists()


@pytest.mark.parametrize(
    "override, expected",
    [
        pytest.param({"split": {"foldz": 3}}, "split.foldz: unknown key", id="unknown-key"),
        pytest.param({"split": {"folds": "x"}}, "split.folds = 'x' is not of type integer", id="wrong-type"),
        pytest.param(
            {"submission": {"kaggle_csv": "diagonal"}},
            "submission.kaggle_csv = 'diagonal' is not one of: row_major, column_major, null",
            id="unknown-choice",
        ),
        pytest.param({"tune": {"metric": "mAP50"}}, "tune.metric = 'mAP50' is not one of", id="unknown-tune-metric"),
        pytest.param(
            {"stain": {"method": "vahadane"}}, "stain.method = 'vahadane' is not one of: none, macenko, reinhard",
            id="unknown-stain-method",
        ),
        pytest.param(
            {"ensemble": {"calibrate": "isotonic"}}, "ensemble.calibrate = 'isotonic' is not one of", id="calibrate"
        ),
        pytest.param({"preprocess": {"shards": 0}}, "preprocess.shards = 0: 0 is less than the minimum of 1", id="shards"),
        pytest.param(
            {"evaluate": {"max_dets": 50}}, "evaluate.max_dets = 50: 50 is less than the minimum of 100", id="max-dets"
        ),
        pytest.param({"evaluate": {"evaluator": "fast"}}, "evaluate.evaluator = 'fast' is not one of", id="evaluator"),
    ],
)
def test_config_error_names_the_key(tmp_path, override, expected):
    extra = write_config(tmp_path / "bad.yaml", override)
    workdir = tmp_path / "work"
    proc = snakemake(workdir, configs=[extra], check=False)
    _assert_failed_before_jobs(proc, workdir, f"ConfigError: {expected}")
    assert "Failed validating" not in proc.stdout  # no schema dump


@pytest.mark.parametrize(
    "override, expected",
    [
        pytest.param({"split": {"group_by": "^(slide\\d+)_"}}, "does not match 8 of 8 image ids", id="group-by"),
        pytest.param({"train": {"ema_decay": 1.5}}, "train.ema_decay = 1.5", id="ema-decay"),
        pytest.param({"split": {"folds": 7}}, "split.folds = 7 needs at least 7 non-validation images", id="folds"),
        pytest.param(
            {"predict": {"overlap": 128}}, "predict.overlap = 128 must be smaller than predict.tile_size = 128",
            id="predict-overlap",
        ),
        pytest.param({"tiles": {"overlap": 200}}, "tiles.overlap = 200 must be smaller than tiles.size = 128", id="tiles-overlap"),
        pytest.param(
            {"ensemble": {"weights": [1, 1, 1]}}, "ensemble.weights has 3 values but split.folds gives 2 folds",
            id="ensemble-weights",
        ),
        pytest.param(
            {"train": {"val_tile_size": 64}}, "train.val_tile_size = 64 differs from predict.tile_size = 128",
            id="val-tile-size",
        ),
        pytest.param({"split": {"folds": 1}}, "split.folds = 1 leaves the fold no held-out images", id="single-fold"),
    ],
)
def test_bad_value_found_at_dag_time_names_the_key(tmp_path, override, expected):
    extra = write_config(tmp_path / "bad.yaml", override)
    workdir = tmp_path / "work"
    proc = snakemake(workdir, configs=[extra], check=False)
    _assert_failed_before_jobs(proc, workdir, "ConfigError", expected)


def test_missing_image_fails_at_dag_time(tmp_path):
    from cellseg.data.demo import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, seed=0, n_train=3, n_test=1)
    missing = sorted((data / "train").iterdir())[1] / "image.tif"
    missing.unlink()
    config = write_config(
        tmp_path / "reference.yaml", {"data": {"source": "reference", "path": str(data)}}
    )
    workdir = tmp_path / "work"
    proc = snakemake(workdir, configs=[config], check=False)
    _assert_failed_before_jobs(proc, workdir, "DataError")
    # One line names the file: its folder and `image.tif`, wherever the message puts them.
    assert any(
        str(missing.parent) in line and "image.tif" in line for line in proc.stdout.splitlines()
    ), proc.stdout


def test_test_ground_truth_for_no_test_image_fails_at_dag_time(tmp_path):
    from cellseg.data.demo import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, seed=0, n_train=3, n_test=2)
    for folder in sorted((data / "test_gt").iterdir()):
        shutil.rmtree(folder)
    (data / "test_gt" / "someone_else").mkdir()
    source = {"source": "reference", "path": str(data), "test_gt": str(data / "test_gt")}
    config = write_config(tmp_path / "reference.yaml", {"data": source})
    workdir = tmp_path / "work"
    proc = snakemake(workdir, configs=[config], check=False)
    _assert_failed_before_jobs(proc, workdir, "DataError", "data.test_gt", "demo_test_000")


def test_a_test_image_without_its_ground_truth_folder_is_scored_as_empty(tmp_path):
    from cellseg.data.demo import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, seed=0, n_train=3, n_test=2)
    shutil.rmtree(sorted((data / "test_gt").iterdir())[0])
    source = {"source": "reference", "path": str(data), "test_gt": str(data / "test_gt")}
    config = write_config(tmp_path / "reference.yaml", {"data": source})
    proc = snakemake(tmp_path / "work", "-n", configs=[config])
    assert "1 test images have no folder" in proc.stdout and "demo_test_000" in proc.stdout



# ------------------------------------------------------------------------------------------
# 6. Bad input, case by case (issue 16): the first line the user sees names the file or key,
#    and no job ran. Folds against images and tile overlap against tile size are in
#    test_bad_value_found_at_dag_time_names_the_key (cases `folds`, `tiles-overlap`).


def _first_train(data: Path) -> Path:
    return sorted((data / "train").iterdir())[0]


def _edit_id_map(data: Path, **changes) -> Path:
    id_map = data / "test_image_name_to_ids.json"
    entries = json.loads(id_map.read_text())
    entries[0].update(changes)
    id_map.write_text(json.dumps(entries))
    return id_map


def _id_map_size(data: Path):
    entry = json.loads((data / "test_image_name_to_ids.json").read_text())[0]
    _edit_id_map(data, height=entry["height"] + 1)
    return {}, str(data / "test_release" / entry["file_name"])


def _id_map_float_id(data: Path):
    return {}, str(_edit_id_map(data, id=1.7))


def _truncated_test_image(data: Path):
    path = sorted((data / "test_release").iterdir())[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return {}, str(path)


def _test_gt_shape(data: Path):
    import tifffile

    path = sorted((data / "test_gt").glob("*/class1.tif"))[0]
    tifffile.imwrite(path, np.zeros((7, 9), np.float64))
    return {"data": {"test_gt": str(data / "test_gt")}}, str(path)


def _brace_in_image_id(data: Path):
    folder = _first_train(data)
    folder.rename(folder.with_name("img{1}"))
    return {}, str(folder.with_name("img{1}"))


def _brace_in_test_name(data: Path):
    entry = json.loads((data / "test_image_name_to_ids.json").read_text())[0]
    (data / "test_release" / entry["file_name"]).rename(data / "test_release" / "a{b}.tif")
    return {}, str(_edit_id_map(data, file_name="a{b}.tif"))


def _two_channel_image(data: Path):
    import tifffile

    path = _first_train(data) / "image.tif"
    height, width = tifffile.imread(path).shape[:2]
    tifffile.imwrite(path, np.zeros((height, width, 2), np.uint8), photometric="minisblack", planarconfig="contig")
    return {}, str(path)


def _no_masks(data: Path):
    for path in (data / "train").glob("*/class*.tif"):
        path.unlink()
    return {}, str(data / "train")


def _dot_named_folder(data: Path):
    folder = _first_train(data)
    folder.rename(folder.with_name("." + folder.name))
    return {}, str(folder.with_name("." + folder.name))


def _upper_case_image(data: Path):
    folder = _first_train(data)
    (folder / "image.tif").rename(folder / "image.TIF")
    return {}, "image.TIF"


@pytest.mark.parametrize(
    "make_case, kind",
    [
        pytest.param(_id_map_size, "DataError", id="id-map-height-width"),
        pytest.param(_id_map_float_id, "DataError", id="id-map-non-integer-id"),
        pytest.param(_truncated_test_image, "DataError", id="truncated-test-image"),
        pytest.param(_test_gt_shape, "DataError", id="test-gt-mask-shape"),
        pytest.param(_brace_in_image_id, "DataError", id="brace-in-image-id"),
        pytest.param(_brace_in_test_name, "DataError", id="brace-in-test-name"),
        pytest.param(_two_channel_image, "DataError", id="two-channel-image"),
        pytest.param(_no_masks, "DataError", id="no-masks"),
        pytest.param(_dot_named_folder, "DataError", id="dot-named-train-folder"),
        pytest.param(_upper_case_image, "DataError", id="upper-case-image-tif"),
    ],
)
def test_bad_data_fails_at_dag_time_naming_the_file(tmp_path, make_case, kind):
    from cellseg.data.demo import write_demo_dataset

    data = tmp_path / "data"
    write_demo_dataset(data, seed=0, n_train=3, n_test=2, min_size=16, max_size=32)
    override, named = make_case(data)
    source = {"source": "reference", "path": str(data), **override.get("data", {})}
    config = write_config(tmp_path / "reference.yaml", {**override, "data": source})
    proc = _dry_run_in_existing_workdir(tmp_path, config)
    _assert_failed_before_jobs(proc, tmp_path / "work")
    first = proc.stdout.splitlines()[0]
    assert first.startswith(f"{kind}: ") and named in first, proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout


def _dry_run_in_existing_workdir(tmp_path: Path, config: Path):
    """A dry run whose workdir exists, so that Snakemake's "Creating specified working
    directory" does not come before the error."""
    (tmp_path / "work").mkdir()
    return snakemake(tmp_path / "work", "-n", configs=[config], check=False)


@pytest.mark.parametrize(
    "override, first_line",
    [
        pytest.param({"data": {"source": "reference"}}, "ConfigError: data.path is required", id="reference-without-path"),
        pytest.param(
            {"data": {"source": "coco", "image_dir": "x"}}, "ConfigError: data.train_json is required", id="coco-without-train-json"
        ),
        pytest.param(
            {"train": {"weights": "imagenet", "weights_path": "missing.pth"}},
            "ConfigError: train.weights_path: missing.pth not found",
            id="missing-weights-path",
        ),
        pytest.param(
            {"train": {"init_from": "missing_run"}},
            "ConfigError: train.init_from: missing_run not found",
            id="missing-init-from",
        ),
        pytest.param({"trian": {"epochs": 2}}, "ConfigError: trian: unknown key (did you mean train?)", id="misspelt-section"),
        pytest.param(
            {"stain": {"method": "macenko", "reference": "nowhere.png"}},
            "ConfigError: stain.reference: nowhere.png not found",
            id="missing-stain-reference",
        ),
        pytest.param(
            {"data": {"test_path": "nowhere"}}, "DataError: data.test_path: nowhere is not a folder", id="missing-test-path"
        ),
        pytest.param(
            {"split": {"foldz": 3}}, "ConfigError: split.foldz: unknown key (did you mean folds?); split takes", id="misspelt-key"
        ),
        pytest.param(
            {"tune": {"metric": "mAP50"}}, "ConfigError: tune.metric = 'mAP50' is not one of: AP", id="unknown-choice"
        ),
        pytest.param(
            {"train": {"box_head": "cascade_rcnn"}},
            "ConfigError: train.box_head = 'cascade_rcnn' is not one of: standard, cascade",
            id="unknown-box-head",
        ),
        pytest.param(
            {"train": {"preset": "gpu"}},
            "ConfigError: train.multiscale_sizes = [448, 512, 576] with tiles.size = 128 resize by 3.5-4.5x",
            id="gpu-multiscale-on-small-tiles",
        ),
        pytest.param({"recipe": "tpu"}, "ConfigError: recipe = 'tpu' is not one of: demo, gpu", id="unknown-recipe"),
    ],
)
def test_bad_config_stops_with_one_line_naming_the_key(tmp_path, override, first_line):
    proc = _dry_run_in_existing_workdir(tmp_path, write_config(tmp_path / "bad.yaml", override))
    _assert_failed_before_jobs(proc, tmp_path / "work")
    assert proc.stdout.splitlines()[0].startswith(first_line), proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout


def test_yaml_syntax_error_in_config_yaml_names_the_file_and_line(tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "config.yaml").write_text("split: {folds: 3\ntiles: [\n")
    proc = snakemake(tmp_path / "work", "-n", check=False)
    _assert_failed_before_jobs(proc, tmp_path / "work")
    assert proc.stdout.splitlines()[0].startswith("ConfigError: config.yaml: line 2, column 6: not valid YAML"), proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 1, proc.stdout


@pytest.mark.xfail(
    strict=True,
    reason="Snakemake parses --configfile files before any workflow code runs, and its YAML error names no file",
)
def test_yaml_syntax_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("split: {folds: 3\ntiles: [\n")
    proc = _dry_run_in_existing_workdir(tmp_path, bad)
    _assert_failed_before_jobs(proc, tmp_path / "work")
    assert str(bad) in proc.stdout.splitlines()[0], proc.stdout


# ------------------------------------------------------------------------------------------
# 7. Recipes: one key gives a run whose parts agree


def test_gpu_recipe_alone_gives_gpu_jobs_fed_by_workers_at_one_magnification(tmp_path):
    """`recipe: gpu` and nothing else (config.yaml, no tiny preset): each fold's training job
    asks for one GPU and the CPUs of its data-loader workers (threads - 1), its tiles are cut
    at the recipe's size, and the model's transform resizes cells by a factor inside the
    training jitter when it predicts. The DAG needs no weights file (train.weights_path null:
    the job fetches the ImageNet backbone itself)."""
    import torch
    import yaml

    from cellseg.model.mask_rcnn import build_model
    from cellseg.workflow.configuration import recipe_values, resolve_config

    extra = write_config(tmp_path / "gpu.yaml", {"recipe": "gpu"})
    workdir = tmp_path / "work"
    proc = snakemake(workdir, "--dry-run", configs=[extra], tiny=False, cores=8)
    jobs = job_fields(proc.stdout)
    train = {wildcards: fields for (rule, wildcards), fields in jobs.items() if rule == "train_fold"}
    assert len(train) == 5, proc.stdout[-3000:]
    for fields in train.values():
        resources = job_resources(fields)
        assert resources["gpu"] == "1" and int(resources["cpus_per_task"]) >= 5, fields  # >= 4 workers
        assert int(fields["threads"]) == int(resources["cpus_per_task"]), fields

    size = recipe_values()["tiles.size"]["gpu"]
    shard = min(wildcard_values(parse_dry_run(proc.stdout), "make_tiles", "shard"))
    snakemake(workdir, f"results/tiles/shard_{shard}.npz", configs=[extra], tiny=False)
    with np.load(workdir / f"results/tiles/shard_{shard}.npz") as tiles:
        assert {tiles[key].shape for key in tiles.files if key.startswith("image_")} == {(size, size, 3)}

    # The train config the workflow resolves from the same files (common.smk).
    config, cfg = resolve_config(yaml.safe_load((REPO / "config.yaml").read_text()) | {"recipe": "gpu"})
    assert cfg["preset"] == "gpu" and config["tiles"]["size"] == size
    transform = build_model(cfg, 4, tile_size=size, pretrained=False).transform
    tile = torch.rand(3, size, size)

    def scale() -> float:
        return transform([tile])[0].image_sizes[0][0] / size

    torch.manual_seed(0)
    transform.train()
    training = {scale() for _ in range(30)}
    transform.eval()
    predicting = scale()
    assert training == {s / size for s in cfg["multiscale_sizes"]} == {0.875, 1.0, 1.125}
    assert min(training) <= predicting <= max(training) and predicting == 1.0
    assert cfg["val_tile_size"] == config["predict"]["tile_size"]  # validation tiles as predicted
