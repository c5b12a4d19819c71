"""Few-step trainings of a tiny Mask R-CNN on hand-made 64 px tiles (CPU, one thread)."""

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from test_predict import Oracle, draw
from test_train_data import CLASSES, synthetic_image, write_tiles

from cellseg.common.errors import DataError
from cellseg.data.dataset import Sample
from cellseg.model.mask_rcnn import build_model
from cellseg.training.data import training_tiles
from cellseg.training.train import (
    NonFiniteLossError,
    Preempted,
    TrainOutputs,
    _Training,
    class_weights,
    lr_factor,
    make_optimizer,
    train_fold,
    validate,
)
from cellseg.workflow.configuration import resolve_train_config

# 4 images of one 64 px tile each, 1 tile a batch, 2 batches a step: 2 steps an epoch, 6 in all;
# a checkpoint after step 3, in the middle of the second epoch.
TRAIN_IDS = ["a", "b", "c", "d"]
TINY = {
    "min_size": 64, "max_size": 128, "rpn_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100,
    "rpn_post_nms_top_n_test": 100, "box_batch_size_per_image": 16, "box_detections_per_img": 30,
    "epochs": 3, "batch_size": 1, "grad_accum_steps": 2, "warmup_steps": 2, "val_every_epochs": 2,
    "checkpoint_every_steps": 3, "min_steps": 0,
}

# Runs one training in a fresh process (argv: tiles folder, output folder, config JSON).
RUN_SCRIPT = """
import json, sys, torch
from pathlib import Path
from cellseg.data.dataset import Sample
from cellseg.training.train import TrainOutputs, train_fold
from cellseg.training.data import training_tiles
import numpy as np
torch.set_num_threads(1)
folder, out, cfg = Path(sys.argv[1]), Path(sys.argv[2]), json.loads(sys.argv[3])
tiles = training_tiles(sorted(folder.glob("*.tsv")), json.loads(sys.argv[5]))
with np.load(folder / "val.npz") as val:
    samples = [Sample("v", val["image"], val["labels"])]
train_fold(tiles, samples, cfg, json.loads(sys.argv[4]), TrainOutputs.in_folder(out), tile_size=64)
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Training tiles of TRAIN_IDS and a 96 px held-out image `v` (also saved as `val.npz`)."""
    folder = tmp_path_factory.mktemp("tiles")
    tsvs, _ = write_tiles(folder, TRAIN_IDS, size=64)
    image, labels = synthetic_image(9, 96)
    np.savez(folder / "val.npz", image=image, labels=labels)
    return folder, training_tiles(tsvs, TRAIN_IDS), [Sample("v", image, labels)]


def train(data, out, **overrides):
    _, tiles, val = data
    cfg = resolve_train_config({**TINY, **overrides})
    return train_fold(tiles, val, cfg, CLASSES, TrainOutputs.in_folder(out), tile_size=64)


def weights(out, name="model_last.pt"):
    return torch.load(out / name, weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def first_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_a")
    return out, train(data, out)


def test_training_writes_weights_table_curve_and_summary(first_run):
    out, summary = first_run
    assert summary["steps"] == summary["total_steps"] == 6 and summary["epochs"] == 3
    assert summary["device"] == "cpu" and summary["weights"] == "random initialisation"
    assert summary["resumed_from_step"] is None and summary["best_epoch"] in (2, 3)
    assert summary["epoch_repeat"] == 1 and summary["warnings"] == []
    assert summary["lr"] == pytest.approx(5e-4) and summary["lr_rule"] == "0.001 x 2/4"  # batch 1 x 2 steps
    assert json.loads((out / "train_summary.json").read_text()) == summary
    history = pd.read_csv(out / "history.csv")
    assert list(history["epoch"]) == [1, 2, 3] and list(history["step"]) == [2, 4, 6]
    for column in ["loss", "loss_classifier", "loss_box_reg", "loss_mask", "loss_objectness", "lr", "images_per_s"]:
        assert history[column].notna().all(), column
    assert history["val_AP"].isna().tolist() == [True, False, False]  # every 2nd epoch and the last
    assert history["lr"].iloc[0] == pytest.approx(summary["lr"])  # epoch 1 ends with the warmup
    assert history["val_AP"].max() == pytest.approx(summary["best_val_ap"])
    assert history["peak_gpu_mem_mb"].isna().all()
    assert (out / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best, last = weights(out, "model_best.pt"), weights(out)
    if summary["best_epoch"] == 3:
        assert_same_weights(best, last)
    else:
        assert any(not torch.equal(best[k], last[k]) for k in best)


def test_same_config_gives_identical_weights(data, first_run, tmp_path):
    train(data, tmp_path)
    assert_same_weights(weights(first_run[0]), weights(tmp_path))


# The rare-class recipe: every switch of issue 9 on, so that resume covers the EMA state, the
# repeat-factor sampler and copy-paste draws.
RARE_CLASS_RECIPE = {"ema_decay": 0.9, "repeat_factor_threshold": 0.9, "copy_paste": 0.5, "class_weighted_loss": True}


@pytest.mark.workflow
@pytest.mark.parametrize(
    "recipe, kill",
    [({}, signal.SIGKILL), (RARE_CLASS_RECIPE, signal.SIGKILL), ({"min_steps": 10}, signal.SIGKILL),
     ({}, signal.SIGTERM), ({"box_head": "cascade"}, signal.SIGKILL)],
    ids=["plain", "rare_class_recipe", "repeated_epochs", "sigterm", "cascade"],
)
def test_killed_run_resumes_to_identical_weights(data, first_run, tmp_path, recipe, kill):
    """SIGKILL loses the steps since the last checkpoint; SIGTERM (SLURM's warning before a
    time-limit kill) checkpoints at the next step boundary and exits 143 (`Preempted`)."""
    folder, _, _ = data
    reference = first_run[0]
    if recipe:
        reference = tmp_path / "uninterrupted"
        train(data, reference, **recipe)
        tmp_path = tmp_path / "resumed"
        tmp_path.mkdir()
    cfg = resolve_train_config({**TINY, **recipe})
    args = [str(folder), str(tmp_path), json.dumps(cfg), json.dumps(CLASSES), json.dumps(TRAIN_IDS)]
    command = [sys.executable, "-c", RUN_SCRIPT, *args]
    env = {"PYTHONPATH": str(Path(__file__).parents[1] / "src"), "PATH": "/usr/bin:/bin"}
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    while not (tmp_path / "checkpoint.pt").exists() and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(kill)
    _, stderr = process.communicate()
    expected_code = -signal.SIGKILL if kill == signal.SIGKILL else 128 + signal.SIGTERM
    assert process.returncode == expected_code, stderr.decode()[-2000:]
    assert not (tmp_path / "model_last.pt").exists()
    summary = train(data, tmp_path, **recipe)
    if kill == signal.SIGKILL:
        assert summary["resumed_from_step"] == 3
    else:  # the checkpoint of the step after the signal, not the periodic one of step 3
        assert 3 < summary["resumed_from_step"] < 6
    assert_same_weights(weights(reference), weights(tmp_path))
    assert_same_weights(weights(reference, "model_best.pt"), weights(tmp_path, "model_best.pt"))
    history = pd.read_csv(tmp_path / "history.csv")
    expected = pd.read_csv(reference / "history.csv")
    pd.testing.assert_frame_equal(history.drop(columns="images_per_s"), expected.drop(columns="images_per_s"))


def test_few_steps_repeat_each_epoch_up_to_min_steps_and_warn(data, tmp_path, caplog):
    """3 epochs of 2 steps fall short of 10 steps: each epoch runs twice (12 steps), validation
    every 2 x 2 passes and after the last, and the summary says why."""
    with caplog.at_level(logging.WARNING, logger="cellseg"):
        summary = train(data, tmp_path, min_steps=10)
    assert summary["steps"] == summary["total_steps"] == 12
    assert summary["epochs"] == 6 and summary["epoch_repeat"] == 2
    assert len(summary["warnings"]) == 1 and "train.min_steps = 10" in summary["warnings"][0]
    assert "WARNING: few optimizer steps" in caplog.text
    history = pd.read_csv(tmp_path / "history.csv")
    assert list(history["step"]) == [2, 4, 6, 8, 10, 12]
    assert history["val_AP"].notna().tolist() == [False, False, False, True, False, True]


def test_nan_loss_stops_with_components_and_other_config_starts_over(data, first_run, tmp_path, caplog):
    shutil.copy(first_run[0] / "checkpoint.pt", tmp_path / "checkpoint.pt")
    with caplog.at_level(logging.INFO, logger="cellseg"):
        with pytest.raises(NonFiniteLossError, match=r"non-finite training loss at step \d.*loss_classifier = "):
            train(
                data, tmp_path, lr=1e30, warmup_steps=0, clip_grad_norm=0.0, grad_accum_steps=1,
                class_weighted_loss=True,
            )
    assert "another config or other inputs, not resuming: starting over" in caplog.text


def test_ema_weights_are_the_ones_saved(data, first_run, tmp_path):
    summary = train(data, tmp_path, ema_decay=0.5)
    assert summary["ema_decay"] == 0.5 and summary["steps"] == 6
    plain, averaged = weights(first_run[0]), weights(tmp_path)
    assert plain.keys() == averaged.keys()  # the EMA saves the model's own state-dict keys
    assert any(not torch.equal(plain[k], averaged[k]) for k in plain)


def test_optimizer_starts_at_the_lr_of_the_total_batch():
    model = torch.nn.Linear(2, 2)
    for user, lr in [({}, 1e-3), ({"preset": "gpu"}, 0.01), ({"preset": "gpu", "grad_accum_steps": 2}, 0.02)]:
        assert make_optimizer(model, resolve_train_config(user)).param_groups[0]["lr"] == pytest.approx(lr)


def test_class_weights_and_schedule():
    assert class_weights([10, 30, 0]).tolist() == pytest.approx([1.0, 1.5, 0.5, 1.0])
    factors = [lr_factor(step, warmup=2, total=6) for step in range(6)]
    assert factors[:3] == pytest.approx([0.5, 1.0, 1.0]) and factors[3] > factors[4] > factors[5] > 0
    assert lr_factor(6, warmup=2, total=6) == pytest.approx(0.0)


@pytest.mark.parametrize("val_tile_size, expected_sizes", [(48, {(48, 48)}), (0, {(70, 100)})])
def test_validation_predicts_large_images_in_tiles(val_tile_size, expected_sizes):
    """Held-out images above `val_tile_size` are seen as the predict stage sees them, in tiles
    whose seams are merged: a perfect segmenter scores AP 1 either way."""
    image, labels = draw(70, 100, [(5, 5, 20, 18, 1), (30, 40, 52, 60, 2), (60, 10, 90, 30, 1), (40, 20, 50, 34, 2)])
    planes = np.stack([np.where(np.isin(labels, ids), labels, 0) for ids in ([1, 3], [2, 4])]).astype(np.int32)
    cfg = resolve_train_config({"val_tile_size": val_tile_size, "batch_size": 2})
    oracle = Oracle()
    metrics = validate(oracle, [Sample("x", image, planes)], ["class1", "class2"], cfg, torch.device("cpu"), overlap=24)
    assert set(oracle.sizes) == expected_sizes
    assert metrics["AP"] == pytest.approx(1.0)


# --- precision paths (issue 12): every `amp` mode and channels_last, forced onto the CPU ---

# 2 epochs of 2 steps, no validation, a checkpoint every 3 steps: enough real optimizer steps
# to move the weights and to resume mid-epoch. Narrow heads: fp16 on the CPU runs about 20
# times slower than fp32.
SHORT = {**TINY, "epochs": 2, "val_every_epochs": 2, "fpn_channels": 32}


def train_amp(data, out, amp="none", channels_last=False, **overrides):
    """A SHORT run without held-out images, in `amp` with `channels_last`, on the CPU."""
    _, tiles, _ = data
    cfg = resolve_train_config({**SHORT, "amp": amp, "channels_last": channels_last, **overrides})
    return train_fold(tiles, [], cfg, CLASSES, TrainOutputs.in_folder(out), tile_size=64, amp_on_cpu=True)


def preempt_at_step(monkeypatch, step, signum=signal.SIGTERM):
    """Send this process `signum` right after optimizer step `step`, as SLURM would mid-run."""
    original = _Training._optimizer_step

    def step_then_signal(self):
        original(self)
        if self.state["step"] == step:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(_Training, "_optimizer_step", step_then_signal)


@pytest.fixture(scope="module")
def fp32_short(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("fp32_short")
    train_amp(data, out)
    return weights(out)


@pytest.fixture
def small_loss_scale(monkeypatch):
    """fp16's GradScaler starts at a loss scale of 2**16 and skips steps while it backs off
    from overflowing gradients, so a test's 4 steps could all be skipped. Started at 2**4, they
    update the weights (fp16 steps on the CPU cost seconds each)."""
    original = torch.amp.GradScaler.__init__

    def low_start(self, *args, **kwargs):
        original(self, *args, **{"init_scale": 2.0**4, **kwargs})

    monkeypatch.setattr(torch.amp.GradScaler, "__init__", low_start)


@pytest.mark.parametrize("amp, channels_last", [("bf16", False), ("fp16", False), ("fp16", True), ("none", True)])
def test_each_precision_trains_on_cpu(data, fp32_short, tmp_path, amp, channels_last, small_loss_scale):
    summary = train_amp(data, tmp_path, amp, channels_last)
    assert summary["amp"] == amp and summary["steps"] == 2 * SHORT["epochs"]
    trained = weights(tmp_path)
    assert all(torch.isfinite(t).all() for t in trained.values() if t.is_floating_point())
    conv = trained["backbone.body.conv1.weight"]
    assert conv.is_contiguous(memory_format=torch.channels_last) == channels_last
    torch.manual_seed(0)  # the run's seed: its initial weights
    initial = build_model(resolve_train_config(SHORT), len(CLASSES), tile_size=64).state_dict()
    assert not torch.equal(trained["roi_heads.mask_predictor.mask_fcn_logits.weight"],
                           initial["roi_heads.mask_predictor.mask_fcn_logits.weight"])  # optimizer steps ran
    if amp != "none":  # autocast really ran: the same seed and data reach other weights than fp32
        assert any(not torch.equal(trained[k], fp32_short[k]) for k in trained)
    scaler = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["scaler"]
    assert bool(scaler) == (amp == "fp16")  # only fp16 keeps a loss scale
    if scaler:
        assert scaler["scale"] > 0


def test_amp_is_off_on_cpu_unless_asked(data, tmp_path):
    _, tiles, _ = data
    cfg = resolve_train_config({**SHORT, "epochs": 1, "amp": "fp16", "channels_last": True})
    summary = train_fold(tiles, [], cfg, CLASSES, TrainOutputs.in_folder(tmp_path), tile_size=64)
    assert summary["amp"] == "none"
    assert not weights(tmp_path)["backbone.body.conv1.weight"].is_contiguous(memory_format=torch.channels_last)


def test_sigterm_in_fp16_resumes_to_identical_weights(data, tmp_path, monkeypatch):
    """Preempted after step 2 (checkpoints are due every 3): the checkpoint is written at that
    step, the run exits 143, and the resumed run ends where an uninterrupted one does."""
    train_amp(data, tmp_path / "whole", "fp16", True)
    with monkeypatch.context() as patch:
        preempt_at_step(patch, 2)
        with pytest.raises(Preempted) as stopped:
            train_amp(data, tmp_path / "cut", "fp16", True)
    assert stopped.value.code == 128 + signal.SIGTERM
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is put back
    assert not (tmp_path / "cut" / "model_last.pt").exists()
    summary = train_amp(data, tmp_path / "cut", "fp16", True)
    assert summary["resumed_from_step"] == 2
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "cut"))


@pytest.mark.parametrize("before, after", [("none", "fp16"), ("fp16", "bf16"), ("bf16", "none")])
def test_checkpoint_resumes_under_another_precision(data, tmp_path, monkeypatch, before, after):
    """none -> fp16 loads the empty state dict of a disabled GradScaler, which GradScaler refuses."""
    with monkeypatch.context() as patch:
        preempt_at_step(patch, 1, signal.SIGUSR1)
        with pytest.raises(Preempted, match=str(128 + signal.SIGUSR1)):
            train_amp(data, tmp_path, before)
    summary = train_amp(data, tmp_path, after, channels_last=after == "fp16")
    assert summary["resumed_from_step"] == 1 and summary["steps"] == 4 and summary["amp"] == after
    assert all(torch.isfinite(t).all() for t in weights(tmp_path).values() if t.is_floating_point())


def test_matching_checkpoint_that_cannot_load_is_a_clear_error(data, tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        preempt_at_step(patch, 1)
        with pytest.raises(Preempted):
            train_amp(data, tmp_path)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    del saved["model"]["roi_heads.box_predictor.cls_score.weight"]
    torch.save(saved, tmp_path / "checkpoint.pt")
    with pytest.raises(DataError, match=r"checkpoint.pt: matches this run's config .* delete it to start over"):
        train_amp(data, tmp_path)


def test_run_started_from_a_finished_run_resumes_to_identical_weights(data, first_run, tmp_path, monkeypatch):
    """train.init_from: the source's sha256 is in the fingerprint and the summary, and a preempted
    run resumes to the weights of an uninterrupted one."""
    _, tiles, _ = data
    source = first_run[0] / "model_best.pt"
    wide = resolve_train_config(TINY)["fpn_channels"]  # the source's heads, not SHORT's narrow ones
    cfg = resolve_train_config({**SHORT, "fpn_channels": wide, "init_from": str(first_run[0])})

    def run(out):
        return train_fold(tiles, [], cfg, CLASSES, TrainOutputs.in_folder(out), tile_size=64, init_weights=source)

    whole = run(tmp_path / "whole")
    assert whole["init_from"]["path"] == str(source) and len(whole["init_from"]["sha256"]) == 64
    assert whole["classes"] == CLASSES and "train.init_from" in whole["weights"]
    with monkeypatch.context() as patch:
        preempt_at_step(patch, 2)
        with pytest.raises(Preempted):
            run(tmp_path / "cut")
    assert run(tmp_path / "cut")["resumed_from_step"] == 2
    assert_same_weights(weights(tmp_path / "whole"), weights(tmp_path / "cut"))
    other = train_amp(data, tmp_path / "scratch")  # the same run from random weights
    assert other["fingerprint"] != whole["fingerprint"] and other["init_from"] is None
