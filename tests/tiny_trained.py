"""A small Mask R-CNN trained for a few steps on drawn cells (shared by the export tests)."""

from __future__ import annotations

import functools

import numpy as np
import torch

from cellseg.model.mask_rcnn import build_model
from cellseg.workflow.configuration import resolve_train_config

CFG = {
    "min_size": None, "max_size": 96, "fpn_channels": 32, "box_detections_per_img": 60,
    "rpn_pre_nms_top_n_test": 200, "rpn_post_nms_top_n_test": 100, "weights": "none",
}  # fmt: skip
TILE = 96


def drawn_cells(seed: int, size: int = TILE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(size, size, 3) uint8 image of dark round cells of 2 classes (class 2 bluer and larger)
    on a pink background, their (N, size, size) bool masks and (N,) classes."""
    rng = np.random.default_rng(seed)
    image = np.empty((size, size, 3), np.float32)
    image[:] = (230, 190, 210)
    yy, xx = np.mgrid[:size, :size]
    masks, classes = [], []
    for _ in range(int(size * size / 900)):
        label = int(rng.integers(1, 3))
        radius = rng.uniform(4, 6) if label == 1 else rng.uniform(7, 9)
        cy, cx = rng.uniform(radius, size - radius, 2)
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
        if any((mask & other).any() for other in masks):
            continue
        image[mask] = (120, 40, 110) if label == 1 else (60, 50, 160)
        masks.append(mask)
        classes.append(label)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), np.array(masks), np.array(classes)


@functools.cache
def tiny_trained_model(steps: int = 25):
    """The model (eval mode, CPU) and its resolved train config, trained `steps` Adam steps on
    two drawn images; deterministic."""
    torch.manual_seed(0)
    cfg = resolve_train_config(CFG)
    model = build_model(cfg, num_classes=2, pretrained=False, tile_size=TILE)
    images, targets = [], []
    for seed in (0, 1):
        image, masks, classes = drawn_cells(seed)
        boxes = [[m.any(0).nonzero()[0][0], m.any(1).nonzero()[0][0], m.any(0).nonzero()[0][-1] + 1,
                  m.any(1).nonzero()[0][-1] + 1] for m in masks]  # fmt: skip
        images.append(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
        targets.append({
            "boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.from_numpy(classes).long(),
            "masks": torch.from_numpy(masks).to(torch.uint8),
        })  # fmt: skip
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(steps):
        losses = model(images, targets)
        optimiser.zero_grad()
        sum(losses.values()).backward()
        optimiser.step()
    return model.eval(), cfg
