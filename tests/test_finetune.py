"""Starting from a finished run's weights: class head rows matched by name, architecture checked."""

import json
import logging

import pytest
import torch

from cellseg.common.errors import ConfigError
from cellseg.model.finetune import load_init_weights
from cellseg.model.init_source import InitSource
from cellseg.model.mask_rcnn import build_model
from cellseg.workflow.configuration import architecture_keys, resolve_train_config

CFG = resolve_train_config({"fpn_channels": 16})
HEADS = {  # class-indexed tensor -> rows per class
    "roi_heads.box_predictor.cls_score.weight": 1,
    "roi_heads.box_predictor.cls_score.bias": 1,
    "roi_heads.box_predictor.bbox_pred.weight": 4,
    "roi_heads.box_predictor.bbox_pred.bias": 4,
    "roi_heads.mask_predictor.mask_fcn_logits.weight": 1,
    "roi_heads.mask_predictor.mask_fcn_logits.bias": 1,
}


def finished_run(folder, classes, cfg=CFG, seed=1):
    """A model_best.pt of `classes` with the train_summary.json a run writes next to it."""
    torch.manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    state = build_model(cfg, len(classes), pretrained=False).state_dict()
    torch.save(state, folder / "model_best.pt")
    summary = {"classes": classes, "architecture": {key: cfg[key] for key in architecture_keys()}}
    (folder / "train_summary.json").write_text(json.dumps(summary))
    return folder / "model_best.pt", state


def rows(tensor, index, width):
    return tensor[index * width:(index + 1) * width]


def test_classes_are_matched_by_name_new_ones_fresh_dropped_ones_gone(tmp_path, caplog):
    path, source = finished_run(tmp_path, ["a", "b", "c"])
    torch.manual_seed(2)
    model = build_model(CFG, 3, pretrained=False)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="cellseg.model.finetune"):
        description = load_init_weights(model, InitSource.read(path), ["c", "new", "a"])
    assert "train.init_from" in description
    loaded = model.state_dict()
    for key, width in HEADS.items():
        for new_index, source_index in [(0, 0), (1, 3), (3, 1)]:  # background, c, a
            assert torch.equal(rows(loaded[key], new_index, width), rows(source[key], source_index, width)), key
        assert torch.equal(rows(loaded[key], 2, width), rows(fresh[key], 2, width)), key  # "new"
    for key in ("backbone.body.conv1.weight", "rpn.head.cls_logits.weight", "roi_heads.box_head.fc6.weight"):
        assert torch.equal(loaded[key], source[key])
    lines = [r.getMessage() for r in caplog.records]
    assert "train.init_from: new classes new start with fresh head rows" in lines
    assert any(line.startswith("train.init_from: classes b of ") for line in lines)


def test_a_source_without_recorded_classes_is_taken_to_have_the_configs(tmp_path, caplog):
    path, source = finished_run(tmp_path, ["a", "b"])
    (tmp_path / "train_summary.json").unlink()
    model = build_model(CFG, 2, pretrained=False)
    load_init_weights(model, InitSource.read(path), ["x", "y"])
    assert all(torch.equal(model.state_dict()[k], source[k]) for k in HEADS)
    assert "records no classes" in caplog.text
    with pytest.raises(ConfigError, match="records no classes and has 2, classes: lists 3"):
        load_init_weights(build_model(CFG, 3, pretrained=False), InitSource.read(path), ["x", "y", "z"])


def test_another_architecture_is_one_error_naming_the_key(tmp_path):
    path, _ = finished_run(tmp_path, ["a"])
    other = resolve_train_config({"fpn_channels": 32})
    with pytest.raises(ConfigError, match=r"train.init_from: .* train.fpn_channels = 16, this config has 32"):
        InitSource.read(path).check_architecture(other)
    (tmp_path / "train_summary.json").unlink()  # no record: the shapes tell
    with pytest.raises(ConfigError, match=r"train.init_from: .*: backbone.fpn.* has shape"):
        load_init_weights(build_model(other, 1, pretrained=False), InitSource.read(path), ["a"])
