"""A stand-in for the network in benchmarks that measure everything around it.

`DarkBlobDetector` costs almost nothing: nuclei as the connected components of dark pixels, in
`CellMaskRCNN.detect`'s output format, so `cellseg.inference.predict` and `cellseg.inference.segment` run on it as
they run on the network. Imported by `segment_scaling.py` and `stage_memory.py` (benchmarks
are run as scripts, so this folder is on `sys.path`).
"""

import numpy as np
import torch
from scipy import ndimage


class DarkBlobDetector(torch.nn.Module):
    """Each connected component of pixels darker than `level` (haematoxylin-stained nuclei, on
    H&E; images (3, H, W) float in [0, 1], as `cellseg.inference.predict` passes them) with at least `min_area` pixels is one
    cell of class 1 and score `score`, its window the component's box and its crop the
    component."""

    def __init__(self, level: float = 0.45, min_area: int = 20, score: float = 0.9):
        super().__init__()
        self.level, self.min_area, self.score = level, min_area, score

    def detect(self, images: list[torch.Tensor]) -> list[dict]:
        return [self._blobs(image.float().mean(0).cpu().numpy() < self.level) for image in images]

    def _blobs(self, dark: np.ndarray) -> dict:
        labels, _ = ndimage.label(dark)
        windows, crops = [], []
        for k, box in enumerate(ndimage.find_objects(labels), 1):
            crop = labels[box] == k
            if crop.sum() >= self.min_area:
                windows.append((box[1].start, box[0].start, box[1].stop, box[0].stop))
                crops.append(crop.astype(np.float32))
        windows = np.asarray(windows, np.int64).reshape(-1, 4)
        return {"boxes": windows.astype(np.float32), "scores": np.full(len(windows), self.score, np.float32),
                "labels": np.ones(len(windows), np.int64), "windows": windows, "crops": crops}
