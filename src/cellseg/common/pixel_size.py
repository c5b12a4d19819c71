"""Physical pixel size (µm per pixel, "mpp"): read from image metadata, and the resampling that
shows the network every image at the pixel size it was trained at.

A model trained on 40× scans (about 0.25 µm/px) sees cells of a 20× slide at half their
trained size and misses many of them. When both the model's training mpp and an image's mpp
are known, the image is resampled to the training mpp before the network, and the instances
found are mapped back onto the image's own pixels; when either is unknown, nothing is
resampled (the image is taken to be at the training mpp).
"""

from __future__ import annotations

import math
import re

import numpy as np
from PIL import Image
from scipy import ndimage

from cellseg.common.instances import InstanceSet

PLAUSIBLE_MPP = (0.01, 100.0)  # µm/px of any microscope; a 72 dpi default tag reads 353
MISMATCH_WARNING = 1.5  # ratio of pixel sizes that changes what the network sees
_UNIT_UM = {"m": 1e6, "cm": 1e4, "mm": 1e3, "µm": 1.0, "um": 1.0, "micron": 1.0, "nm": 1e-3}
_TIFF_UNIT_UM = {2: 25400.0, 3: 10000.0}  # ResolutionUnit: inch, centimeter
_OME_SIZE = re.compile(r'PhysicalSizeX="([0-9.eE+-]+)"')
_OME_UNIT = re.compile(r'PhysicalSizeXUnit="([^"]+)"')
_APERIO_MPP = re.compile(r"\bMPP\s*=\s*([0-9.eE+-]+)")


def page_mpp(page) -> float | None:
    """The µm per pixel a TIFF page's metadata states, or None: OME-XML `PhysicalSizeX`, an
    Aperio description's `MPP =`, an ImageJ `unit=micron` with its resolution, or the
    resolution tags in inches or centimetres. Values outside `PLAUSIBLE_MPP` are ignored."""
    tif = page.parent
    description = page.description or ""
    if tif.is_ome and tif.ome_metadata:
        found = _OME_SIZE.search(tif.ome_metadata)
        unit = _OME_UNIT.search(tif.ome_metadata)
        if found:
            return _plausible(float(found.group(1)) * _UNIT_UM.get(unit.group(1) if unit else "µm", math.nan))
    found = _APERIO_MPP.search(description)
    if found:
        return _plausible(float(found.group(1)))
    resolution = page.tags.get("XResolution")
    if resolution is None:
        return None
    numerator, denominator = resolution.value
    if not numerator or not denominator:
        return None
    per_unit = numerator / denominator
    imagej_unit = (tif.imagej_metadata or {}).get("unit") if tif.is_imagej else None
    if imagej_unit:
        return _plausible(_UNIT_UM.get(imagej_unit, math.nan) / per_unit)
    unit = int(page.tags["ResolutionUnit"].value) if "ResolutionUnit" in page.tags else 2
    return _plausible(_TIFF_UNIT_UM[unit] / per_unit) if unit in _TIFF_UNIT_UM else None


def _plausible(mpp: float) -> float | None:
    return round(mpp, 6) if PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def network_scale(image_mpp: float | None, model_mpp: float | None) -> float:
    """Network pixels per image pixel: image mpp / model mpp, 1 when either is unknown."""
    if not image_mpp or not model_mpp:
        return 1.0
    return image_mpp / model_mpp


def resampled_image(pixels: np.ndarray, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 resized by `scale` (Pillow's bilinear filter, antialiased when shrinking)."""
    height, width = pixels.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.array(Image.fromarray(np.ascontiguousarray(pixels)).resize(size, Image.Resampling.BILINEAR))


def instances_on_image(found: InstanceSet, image_size: tuple[int, int]) -> InstanceSet:
    """Instances found on a resampled copy, mapped onto the original image of `image_size`
    (H, W): boxes scaled, each soft mask sampled (bilinear) at the original pixels' centres."""
    height, width = image_size
    scale_y, scale_x = found.image_size[0] / height, found.image_size[1] / width
    boxes = found.boxes / np.array([scale_x, scale_y, scale_x, scale_y], np.float32)
    boxes = np.clip(boxes, 0, np.array([width, height, width, height], np.float32))
    windows, crops = [], []
    for (x0, y0, x1, y1), probs in zip(found.windows.tolist(), found.probs):
        ox0, ox1 = _span(x0, x1, scale_x, width)
        oy0, oy1 = _span(y0, y1, scale_y, height)
        rows = (np.arange(oy0, oy1) + 0.5) * scale_y - 0.5 - y0
        cols = (np.arange(ox0, ox1) + 0.5) * scale_x - 0.5 - x0
        grid = np.meshgrid(rows, cols, indexing="ij")
        crops.append(ndimage.map_coordinates(probs / 255.0, grid, order=1, mode="grid-constant", cval=0.0))
        windows.append((ox0, oy0, ox1, oy1))
    mapped = InstanceSet.from_windows(
        image_size, boxes, found.scores, found.classes, np.array(windows, np.int32).reshape(-1, 4), crops
    )
    mapped.class_scores = found.class_scores
    return mapped


def _span(start: int, end: int, scale: float, length: int) -> tuple[int, int]:
    """The original pixels whose centres fall within network pixels start..end (exclusive)."""
    first = max(0, math.floor(start / scale))
    return first, max(first + 1, min(length, math.ceil(end / scale)))


def mpp_warnings(model_mpp: float | None, image_mpps: dict[str, float | None], key: str) -> list[str]:
    """Lines to warn about before any job: images whose pixel size cannot be matched to the
    model's because only one side of the pair is known. `image_mpps`: {file: mpp or None};
    `key`: the config key that would state the missing side."""
    known = {name: mpp for name, mpp in image_mpps.items() if mpp}
    if model_mpp or not known:
        return []
    low, high = min(known.values()), max(known.values())
    spread = f" (their pixel sizes differ by {high / low:.2g}x)" if high / low > MISMATCH_WARNING else ""
    first = next(iter(known))
    return [
        f"{first} and {len(known) - 1} more images state {known[first]} µm/px{spread}, but the training "
        f"pixel size is unknown, so they are not resampled: set {key} (µm per pixel of the training images)"
    ]
