"""Training one fold's Mask R-CNN on tiles, with validation on the fold's held-out whole images.

Reproducible and resumable: on CPU the same config and inputs give bit-identical weights, and a
run killed at any point and started again ends with exactly the weights of an uninterrupted
run. The input pipeline's randomness is a function of (seed, epoch, index) (`train_data`), the
model's (RoI sampling, multi-scale draws) comes from torch's global RNG, whose state the
checkpoint restores together with the model, optimizer, scheduler, AMP scaler, position in the
epoch, running epoch sums, history and best weights. A checkpoint whose fingerprint (config +
inputs) differs is not resumed: training starts over and the log says why. Device, `amp` and
`channels_last` are not in the fingerprint: a run checkpointed on one GPU in fp16 may resume
on another machine, in bf16 or on the CPU (not bit-identical then, but the same schedule).

Preemption: SIGTERM (what SLURM sends before a time-limit or preemption kill, and what
`scancel` sends) or SIGUSR1 makes the run write a checkpoint at the next optimizer-step
boundary and exit with 128 + the signal's number, so that Snakemake's `retries` (or a SLURM
requeue) starts the job again and it resumes there, losing no steps.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cellseg.common.device import autocast, resolve_amp, select_device
from cellseg.common.errors import DataError
from cellseg.common.files import atomic_path, file_sha256
from cellseg.common.progress import Progress
from cellseg.data.augment import build_augment
from cellseg.data.dataset import Sample
from cellseg.inference.predict import predict_image
from cellseg.model.checkpoint import fingerprint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from cellseg.model.ema import make_ema
from cellseg.model.finetune import load_init_weights
from cellseg.model.init_source import InitSource
from cellseg.model.mask_rcnn import build_model
from cellseg.scoring.metrics import coco_mask_metrics
from cellseg.training.data import TileDataset, class_instance_counts, make_loader, repeat_factors, start_epoch
from cellseg.training.history import VAL_KEYS, plot_curve, write_history, write_summary
from cellseg.training.lr_rule import effective_lr, lr_rule

log = logging.getLogger(__name__)

PROGRESS_LINES = 50  # about this many progress lines per run
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# How a run computes, not what it computes: a checkpoint resumes across these.
EXECUTION_KEYS = ("amp", "channels_last")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message lists every loss component."""


class Preempted(SystemExit):
    """Training stopped on a signal after writing its checkpoint. A SystemExit with code
    128 + the signal's number, as a process killed by it reports: the job ends without a
    traceback, and Snakemake or SLURM sees a failure that `retries` / requeue starts again."""


@dataclass(frozen=True)
class TrainOutputs:
    """Files one fold's training writes (see docs/design.md).

    `checkpoint` is the resume state; it must not be a declared Snakemake output, or Snakemake
    deletes it when a job fails and the rerun cannot resume.
    """

    best: Path
    last: Path
    history: Path
    curve: Path
    summary: Path
    checkpoint: Path

    @classmethod
    def in_folder(cls, folder: str | os.PathLike) -> TrainOutputs:
        folder = Path(folder)
        return cls(
            best=folder / "model_best.pt", last=folder / "model_last.pt", history=folder / "history.csv",
            curve=folder / "curve.png", summary=folder / "train_summary.json", checkpoint=folder / "checkpoint.pt",
        )


def class_weights(counts: list[int]) -> torch.Tensor:
    """`(C + 1,)` classifier weights: background 1, class k ∝ 1 / its instance count, with mean 1
    over the classes present; an absent class gets 1.
    """
    counts = np.asarray(counts, np.float64)
    weights = np.ones(len(counts) + 1)
    present = counts > 0
    inverse = 1.0 / counts[present]
    weights[1:][present] = inverse / inverse.mean()
    return torch.tensor(weights, dtype=torch.float32)


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def epoch_repeat(epochs: int, steps_per_epoch: int, min_steps: int) -> int:
    """How many times each epoch is run so that the schedule reaches `min_steps` optimizer
    steps: 1 when `epochs` already do, else the smallest repeat that does (0 = no minimum)."""
    return max(1, math.ceil(min_steps / (epochs * steps_per_epoch)))


def make_optimizer(model: torch.nn.Module, cfg: dict) -> torch.optim.Optimizer:
    """AdamW or SGD (with momentum) over the trainable parameters, at `effective_lr(cfg)`."""
    params = [p for p in model.parameters() if p.requires_grad]
    lr = effective_lr(cfg)
    if cfg["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg["weight_decay"])
    return torch.optim.SGD(params, lr=lr, momentum=cfg["momentum"], weight_decay=cfg["weight_decay"])


def validate(
    model, samples: list[Sample], class_names: list[str], cfg: dict, device, overlap: int, amp: str = "none"
) -> dict:
    """COCO mask metrics of `model` on `samples` (labels `(C, H, W)`, 0 = background).

    Images larger than `val_tile_size` are predicted in overlapping tiles, as the predict stage
    does (`cellseg.inference.predict.predict_image`, no TTA, in precision `amp`): whole, a large image meets proposal and
    detection caps sized for a tile (the schema's description of `train.val_tile_size` has the measurement).
    """
    model.eval()
    preds = [
        predict_image(
            model, s.image, cfg["val_tile_size"], overlap, tta=[], device=device, batch_size=cfg["batch_size"], amp=amp
        )
        for s in samples
    ]
    model.train()
    max_dets = max(100, cfg["box_detections_per_img"])
    return coco_mask_metrics([s.labels for s in samples], preds, class_names, max_dets=max_dets)


def run_fingerprint(
    tiles: pd.DataFrame, val_samples: list[Sample], cfg: dict, class_names, tile_size: int, overlap: int,
    init_sha256: str | None = None,
) -> str:
    """Fingerprint of everything that decides the trained weights (not device, precision or
    worker count: `EXECUTION_KEYS`). The weights started from count by content (`init_sha256`),
    not by the `init_from` path, so a moved run folder still resumes."""
    train = {k: v for k, v in cfg.items() if k not in (*EXECUTION_KEYS, "init_from")}
    config = {
        "train": train, "classes": list(class_names), "tile_size": tile_size, "overlap": overlap,
        "init_from": init_sha256,
        "tiles": tiles[["image_id", "tile"]].astype(str).values.tolist(),
        "val": [s.image_id for s in val_samples],
    }
    arrays = [a for s in val_samples for a in (s.image, s.labels)]
    return fingerprint(config, sorted(set(tiles["npz"])), arrays)


def _save_state_dict(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp)


def _seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if device.type == "cpu":
        torch.use_deterministic_algorithms(True, warn_only=True)


class _Training:
    """One fold's training run: setup, resume, the loop, and the outputs."""

    def __init__(
        self, tiles, val_samples, cfg, class_names, outputs, num_workers, device, tile_size, overlap, amp_on_cpu, mpp,
        init_weights, architecture_keys,
    ):
        self.cfg, self.class_names, self.outputs, self.val_samples = cfg, list(class_names), outputs, val_samples
        self.architecture_keys = list(architecture_keys)
        self.mpp, self.num_workers = mpp, num_workers
        self.device = select_device(device)
        self.cuda = self.device.type == "cuda"
        self.amp = resolve_amp(self.device, cfg["amp"], on_cpu=amp_on_cpu)
        self.channels_last = cfg["channels_last"] and (self.cuda or amp_on_cpu)
        self.stop_signal = None
        _seed_everything(cfg["seed"], self.device)
        self.overlap = overlap
        if bool(cfg["init_from"]) != (init_weights is not None):
            raise ValueError("train.init_from and init_weights (the file it resolves to) go together")
        self.init = {"path": str(init_weights), "sha256": file_sha256(init_weights)} if init_weights else None
        self.fingerprint = run_fingerprint(
            tiles, val_samples, cfg, class_names, tile_size, overlap, self.init and self.init["sha256"]
        )
        weights = class_weights(class_instance_counts(tiles, class_names)) if cfg["class_weighted_loss"] else None
        # train.init_from takes precedence over train.weights / weights_path.
        self.model = build_model(cfg, len(class_names), weights, tile_size=tile_size, pretrained=not init_weights)
        if init_weights:
            self.model.weights_description = load_init_weights(self.model, InitSource.read(init_weights), self.class_names)
        self.model = self.model.to(self.device)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        augment = build_augment(cfg["augment"], cfg["augment_overrides"], cfg["stain_jitter"])
        dataset = TileDataset(tiles, augment, cfg["seed"], cfg["copy_paste"], class_names)
        threshold = cfg["repeat_factor_threshold"]
        repeat = repeat_factors(tiles, class_names, threshold) if threshold is not None else None
        self.loader = make_loader(dataset, cfg["batch_size"], num_workers, cfg["seed"], repeat)
        self.n_batches = math.ceil(len(self.loader.sampler) / cfg["batch_size"])
        steps_per_epoch = math.ceil(self.n_batches / cfg["grad_accum_steps"])
        # A small dataset repeats each epoch (validation follows) rather than train a few steps.
        self.repeat = epoch_repeat(cfg["epochs"], steps_per_epoch, cfg["min_steps"])
        self.epochs, self.val_every = cfg["epochs"] * self.repeat, cfg["val_every_epochs"] * self.repeat
        self.total_steps = self.epochs * steps_per_epoch
        self.warnings = [] if self.repeat == 1 else [
            f"few optimizer steps: train.epochs = {cfg['epochs']} of {steps_per_epoch} steps each fall short of "
            f"train.min_steps = {cfg['min_steps']}, so each epoch runs {self.repeat} times ({self.total_steps} steps); "
            "a dataset this small gives a weak model"
        ]
        self.optimizer = make_optimizer(self.model, cfg)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, partial(lr_factor, warmup=cfg["warmup_steps"], total=self.total_steps)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.ema = make_ema(self.model, cfg["ema_decay"]) if cfg["ema_decay"] is not None else None
        self.state = {
            "step": 0, "epoch": 0, "batch_in_epoch": 0, "done": False, "history": [],
            "sums": {}, "epoch_images": 0, "epoch_seconds": 0.0, "elapsed": 0.0,
            "best_ap": None, "best_epoch": None, "best_model": None, "validations_since_best": 0,
        }
        self.resumed_from = self._resume()
        self.elapsed_before = self.state["elapsed"]
        self.started = self.tic = time.perf_counter()
        for warning in self.warnings:
            log.warning("WARNING: %s", warning)
        log.info(
            "fold training: %d tiles, %d per epoch (%d batches of %d), %d held-out images, %d optimizer steps, "
            "device %s, amp %s, channels_last %s, lr %g (%s)", len(dataset), len(self.loader.sampler), self.n_batches,
            cfg["batch_size"], len(val_samples), self.total_steps, self.device, self.amp, self.channels_last,
            effective_lr(cfg), lr_rule(cfg),
        )

    @property
    def scored_model(self) -> torch.nn.Module:
        """The weights validated and saved: the EMA's when `ema_decay` is set, else the model's."""
        return self.ema.module if self.ema is not None else self.model

    def _resume(self) -> int | None:
        """Load the checkpoint when it exists and matches this run; the step resumed from, or None."""
        path = self.outputs.checkpoint
        if not path.exists():
            return None
        saved = load_checkpoint(path)
        if saved.get("fingerprint") != self.fingerprint:
            log.warning("%s: made with another config or other inputs, not resuming: starting over", path)
            return None
        try:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            if self.ema is not None:
                self.ema.load_state_dict(saved["ema"])
            set_rng_state(saved["rng"])
            state = saved["state"]
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            raise DataError(
                f"{path}: matches this run's config and inputs but cannot be resumed "
                f"({type(error).__name__}: {' '.join(str(error).split())[:300]}); delete it to start over"
            ) from None
        # A checkpoint of an fp16 run holds the loss scale; one of a bf16 / fp32 run an empty
        # dict, which GradScaler.load_state_dict refuses: an fp16 resume then starts a new scale.
        if saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        elif self.scaler.is_enabled():
            log.info("%s: no fp16 loss scale saved (run without fp16): starting a new one", path)
        self.state = state
        log.info("resuming from %s at step %d (epoch %d)", path, self.state["step"], self.state["epoch"] + 1)
        return self.state["step"]

    def _checkpoint(self) -> None:
        now = time.perf_counter()
        self.state["epoch_seconds"] += now - self.tic
        self.state["elapsed"] = self.elapsed_before + now - self.started
        self.tic = now
        save_checkpoint(self.outputs.checkpoint, {
            "fingerprint": self.fingerprint, "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(), "rng": rng_state(), "state": self.state,
            "ema": self.ema.state_dict() if self.ema is not None else None,
        })

    def run(self) -> dict:
        progress = Progress(log, self.total_steps, self.state["step"], self.total_steps // PROGRESS_LINES)
        with self._signals_caught():
            while self.state["epoch"] < self.epochs and not self.state["done"]:
                start_epoch(self.loader, self.state["epoch"], self.state["batch_in_epoch"])
                if self.cuda:
                    torch.cuda.reset_peak_memory_stats(self.device)
                self.model.train()
                for images, targets in self.loader:
                    self._train_batch(images, targets, progress)
                self._end_epoch()
                if self.state["done"] or self.state["epoch"] == self.epochs:
                    self.state["done"] = True
                    self._checkpoint()
                else:
                    self._stop_if_signalled(saved=False)  # a signal during validation
        return self._write_outputs()

    @contextmanager
    def _signals_caught(self):
        """While training, `PREEMPT_SIGNALS` only set `stop_signal` (acted on at the next step
        boundary); the previous handlers come back afterwards. Signals can only be caught in the
        main thread, so elsewhere (a caller's worker thread) they keep their default action."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self._on_signal) for sig in PREEMPT_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    def _stop_if_signalled(self, saved: bool) -> None:
        """After a caught signal: checkpoint (unless `saved` just now) and raise `Preempted`."""
        if self.stop_signal is None:
            return
        if not saved:
            self._checkpoint()
        name = signal.Signals(self.stop_signal).name
        log.warning(
            "%s: checkpoint written at step %d of %d, exiting with %d so that the job is retried and resumes there",
            name, self.state["step"], self.total_steps, 128 + self.stop_signal,
        )
        raise Preempted(128 + self.stop_signal)

    def _train_batch(self, images, targets, progress: Progress) -> None:
        """Forward (under autocast), backward; an optimizer step at the end of each accumulation group."""
        accum, state = self.cfg["grad_accum_steps"], self.state
        group_start = state["batch_in_epoch"] // accum * accum
        group_size = min(accum, self.n_batches - group_start)
        images = [image.to(self.device) for image in images]
        targets = [{k: v.to(self.device) for k, v in target.items()} for target in targets]
        with autocast(self.device, self.amp):
            loss_dict = self.model(images, targets)
        loss = sum(loss_dict.values())
        values = {name: value.detach().item() for name, value in loss_dict.items()}
        values = {"loss": sum(values.values()), **values}
        if not math.isfinite(values["loss"]):
            parts = ", ".join(f"{name} = {value:.4g}" for name, value in values.items() if name != "loss")
            raise NonFiniteLossError(
                f"non-finite training loss at step {state['step'] + 1} (epoch {state['epoch'] + 1}): {parts}; "
                "lower train.lr, keep train.clip_grad_norm > 0, or check the training tiles"
            )
        self.scaler.scale(loss / group_size).backward()
        for name, value in values.items():
            state["sums"][name] = state["sums"].get(name, 0.0) + value
        state["batch_in_epoch"] += 1
        state["epoch_images"] += len(images)
        if state["batch_in_epoch"] - group_start == group_size:
            self._optimizer_step()
            progress.update(state["step"], f"loss {values['loss']:.4f}  lr {self.optimizer.param_groups[0]['lr']:.3g}")
            due = state["step"] % self.cfg["checkpoint_every_steps"] == 0
            if due:
                self._checkpoint()
            self._stop_if_signalled(saved=due)

    def _optimizer_step(self) -> None:
        if self.cfg["clip_grad_norm"] > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg["clip_grad_norm"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self.state["step"] += 1

    def _end_epoch(self) -> None:
        """The epoch's table row, validation when due, best weights and early stopping."""
        state, epoch = self.state, self.state["epoch"]
        state["epoch_seconds"] += time.perf_counter() - self.tic
        row = {"epoch": epoch + 1, "step": state["step"]}
        row.update({name: total / self.n_batches for name, total in state["sums"].items()})
        row["lr"] = self.optimizer.param_groups[0]["lr"]
        due = (epoch + 1) % self.val_every == 0 or epoch + 1 == self.epochs
        metrics = validate(
            self.scored_model, self.val_samples, self.class_names, self.cfg, self.device, self.overlap, self.amp
        ) if due and self.val_samples else {}
        row.update({f"val_{key}": metrics.get(key) for key in VAL_KEYS})
        row["images_per_s"] = state["epoch_images"] / max(state["epoch_seconds"], 1e-9)
        row["peak_gpu_mem_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None
        state["history"].append(row)
        log.info("epoch %d/%d: loss %.4f, val AP %s", epoch + 1, self.epochs, row["loss"], metrics.get("AP"))
        if metrics:
            self._track_best(epoch + 1, metrics["AP"])
        state.update(epoch=epoch + 1, batch_in_epoch=0, sums={}, epoch_images=0, epoch_seconds=0.0)
        self.tic = time.perf_counter()  # validation is not training time

    def _track_best(self, epoch: int, ap: float) -> None:
        """Keep the weights of the best val AP so far (`epoch` 1-based); stop when patience runs out."""
        state = self.state
        if state["best_ap"] is None or ap > state["best_ap"]:
            state.update(best_ap=ap, best_epoch=epoch, validations_since_best=0)
            state["best_model"] = {k: v.detach().cpu().clone() for k, v in self.scored_model.state_dict().items()}
            return
        state["validations_since_best"] += 1
        patience = self.cfg["early_stopping_patience"]
        if patience and state["validations_since_best"] >= patience:
            log.info("early stopping: val AP has not improved for %d validations", patience)
            state["done"] = True

    def _early_stop_warning(self) -> list[str]:
        if self.state["step"] >= self.cfg["min_steps"]:
            return []
        warning = f"few optimizer steps: early stopping ended training after {self.state['step']} steps, " \
            f"fewer than train.min_steps = {self.cfg['min_steps']}"
        log.warning("WARNING: %s", warning)
        return [warning]

    def _write_outputs(self) -> dict:
        state, outputs = self.state, self.outputs
        last = self.scored_model.state_dict()
        _save_state_dict(outputs.last, last)
        _save_state_dict(outputs.best, state["best_model"] or last)
        write_history(outputs.history, state["history"])
        plot_curve(outputs.curve, state["history"])
        summary = {
            "weights": self.model.weights_description, "init_from": self.init,
            "classes": self.class_names, "architecture": {key: self.cfg[key] for key in self.architecture_keys},
            "device": str(self.device), "amp": self.amp,
            "ema_decay": self.cfg["ema_decay"], "lr": effective_lr(self.cfg), "lr_rule": lr_rule(self.cfg),
            "mpp": self.mpp, "resize": self.model.transform.scales(), "data_loader_workers": self.num_workers,
            "steps": state["step"], "total_steps": self.total_steps, "epochs": state["epoch"],
            "epoch_repeat": self.repeat, "stopped_early": state["epoch"] < self.epochs,
            "wall_time_s": round(time.perf_counter() - self.started, 2),
            "wall_time_all_runs_s": round(state["elapsed"], 2),
            "best_val_ap": state["best_ap"],
            "best_epoch": state["best_epoch"],
            "best_weights": "best validation AP" if state["best_model"] else "last (never validated)",
            "resumed_from_step": self.resumed_from, "fingerprint": self.fingerprint,
            "warnings": self.warnings + self._early_stop_warning(),
        }
        write_summary(outputs.summary, summary)
        return summary


def train_fold(
    tiles: pd.DataFrame,
    val_samples: list[Sample],
    cfg: dict,
    class_names: list[str],
    outputs: TrainOutputs,
    *,
    tile_size: int,
    val_overlap: int = 0,
    num_workers: int = 0,
    device: str = "auto",
    amp_on_cpu: bool = False,
    mpp: float | None = None,
    init_weights: str | os.PathLike | None = None,
    architecture_keys: Sequence[str] = (),
) -> dict:
    """Train one fold's model and write `outputs`; returns the summary written to `outputs.summary`.

    tiles: the training tiles (`train_data.training_tiles`: index rows plus `npz`), of the
        training images outside this fold.
    val_samples: the fold's held-out whole images, validated every `val_every_epochs` epochs
        and after the last.
    cfg: the resolved `train:` section (`cellseg.workflow.configuration.resolve_train_config`).
    tile_size: the tiles' side S (`tiles.size`), so that validation sees cells at the training
        magnification; 0 for whole-image tiles.
    val_overlap: the overlap of validation tiles (`predict.overlap`, as the predict stage).
    num_workers: DataLoader worker processes (does not change the result).
    device: `auto` (CUDA if available, else CPU) or a torch device name.
    amp_on_cpu: honour `amp` and `channels_last` on the CPU too (they are CUDA-only otherwise);
        for tests, which run every precision path without a GPU.
    mpp: the µm per pixel of the training images (`data.mpp`), recorded in the summary with
        the resize factors the model applies while training and when predicting.
    init_weights: the file `cfg["init_from"]` resolves to for this fold
        (`init_source.init_weights_file`), loaded with classes matched by name
        (`cellseg.model.finetune`); its path and sha256 are recorded in the summary. The
        workflow checked its architecture while building the DAG.
    architecture_keys: the train keys recorded as the model's architecture, which a later run
        that fine-tunes these weights must match (`configuration.architecture_keys`).

    Resumes from `outputs.checkpoint` when it exists and matches this config and these inputs
    (`DataError` when it matches but cannot be loaded). Raises `NonFiniteLossError` when the
    loss diverges, `Preempted` after a SIGTERM / SIGUSR1 (module doc).
    """
    return _Training(
        tiles, val_samples, cfg, class_names, outputs, num_workers, device, tile_size, val_overlap, amp_on_cpu, mpp,
        init_weights, architecture_keys,
    ).run()
