"""`train.init_from`: the finished run (or one weights file) a training starts from.

Imports no torch, because the Snakefile resolves and checks it while building the DAG. A run's
fold k writes `results/train/fold<k>/model_best.pt` next to its `train_summary.json`, which
records the classes and the architecture keys the weights were trained with; the new run's
architecture must match them, and its classes are matched to them by name
(`cellseg.model.finetune`). A weights file without that summary (a run older than these records)
is taken to have this config's classes, with a warning.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cellseg.common.errors import ConfigError

RUN_WEIGHTS = "results/train/fold{fold}/model_best.pt"


def init_weights_file(init_from: str | os.PathLike, fold: int) -> Path:
    """The weights fold `fold` starts from: `init_from` itself when it is a file, else that
    run folder's fold `fold`. `ConfigError` naming `train.init_from` when it does not exist."""
    path = Path(init_from)
    if path.is_file():
        return path
    if not path.is_dir():
        raise ConfigError(f"train.init_from: {path} not found (a finished run's folder or a model_best.pt file)")
    weights = path / RUN_WEIGHTS.format(fold=fold)
    if not weights.is_file():
        raise ConfigError(
            f"train.init_from: {weights} not found: that run has no trained fold {fold}; "
            "train it there, or name one model_best.pt file to start every fold from"
        )
    return weights


@dataclass(frozen=True)
class InitSource:
    """A weights file to start from, with what its run's train_summary.json recorded (None
    where that summary or the record is absent)."""

    path: Path
    classes: list[str] | None
    architecture: dict | None

    @classmethod
    def read(cls, path: str | os.PathLike) -> InitSource:
        path = Path(path)
        summary_file = path.parent / "train_summary.json"
        summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        return cls(path, summary.get("classes"), summary.get("architecture"))

    def check_architecture(self, cfg: dict) -> None:
        """`ConfigError` naming `train.init_from` and the first architecture key (those its run
        recorded) that differs."""
        for key, value in (self.architecture or {}).items():
            if key in cfg and cfg[key] != value:
                raise ConfigError(
                    f"train.init_from: {self.path} was trained with train.{key} = {value!r}, this config has "
                    f"{cfg[key]!r}; fine-tuning needs the same architecture"
                )
