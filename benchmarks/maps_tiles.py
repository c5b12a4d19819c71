"""Speed and agreement of the vectorised maps against a per-instance loop, and tiling speed.

The loop is the common recipe: for each instance, over the whole image, a Gaussian at its
(rounded) centre of mass and `binary_dilation XOR binary_erosion` of its mask (3x3 square,
`width` iterations, scipy's default border_value=0). Run from the repository root:

    PYTHONPATH=src python benchmarks/maps_tiles.py [--limit N] [--data PATH]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from cellseg.common.images import read_image, read_mask
from cellseg.data.target_maps import compute_maps
from cellseg.data.tiles import make_tiles, save_tiles

SIGMA, WIDTH = 3.0, 1
TILE_SIZE, OVERLAP, MIN_AREA = 256, 64, 16


def loop_maps(labels: np.ndarray, sigma: float, width: int) -> dict[str, np.ndarray]:
    """Per-instance reference: `center` float32, `ring` (dilation XOR erosion) and `inner` (ring & mask)."""
    rows, cols = np.mgrid[: labels.shape[1], : labels.shape[2]].astype(np.float32)
    square = np.ones((3, 3), bool)
    center = np.zeros(labels.shape[1:], np.float32)
    ring = np.zeros(labels.shape[1:], bool)
    inner = np.zeros(labels.shape[1:], bool)
    for plane in labels:
        for i in range(1, int(plane.max()) + 1):
            mask = plane == i
            cy, cx = np.floor(np.array(ndimage.center_of_mass(mask)) + 0.5)
            gauss = np.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / np.float32(2 * sigma**2))
            np.maximum(center, gauss, out=center)
            edge = ndimage.binary_dilation(mask, square, width) ^ ndimage.binary_erosion(mask, square, width)
            ring |= edge
            inner |= edge & mask
    return {"center": center, "ring": ring, "inner": inner}


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("../shared/data/monuseg/train"))
    parser.add_argument("--limit", type=int, default=None, help="use only the first N images")
    args = parser.parse_args()
    folders = sorted(p.parent for p in args.data.glob("*/class1.tif"))[: args.limit]
    if not folders:
        raise SystemExit(f"no */class1.tif under {args.data}")

    seconds = dict.fromkeys(["maps", "loop", "tiles", "save"], 0.0)
    agree = dict.fromkeys(["center", "inner", "inner_off_edge", "ring"], 0)
    n_pixels = n_instances = n_tiles = 0
    with tempfile.TemporaryDirectory() as tmp:
        for folder in folders:
            image = read_image(folder / "image.tif")
            labels = read_mask(folder / "class1.tif")[None]  # (1, H, W) int32, ids 1..n
            maps, t = timed(compute_maps, labels, SIGMA, WIDTH)
            seconds["maps"] += t
            ref, t = timed(loop_maps, labels, SIGMA, WIDTH)
            seconds["loop"] += t
            tiles, t = timed(
                make_tiles, image, labels, maps["center"], maps["boundary"], TILE_SIZE, OVERLAP,
                True, MIN_AREA, image_id=folder.name, class_names=["class1"],
            )
            seconds["tiles"] += t
            _, t = timed(save_tiles, Path(tmp, "t.npz"), Path(tmp, "t.tsv"), *tiles)
            seconds["save"] += t

            ours = maps["boundary"].astype(bool)
            off_edge = np.zeros_like(ours)
            off_edge[WIDTH:-WIDTH, WIDTH:-WIDTH] = True
            agree["center"] += np.count_nonzero(np.abs(maps["center"] - ref["center"]) <= 1e-3)
            agree["inner"] += np.count_nonzero(ours == ref["inner"])
            agree["inner_off_edge"] += np.count_nonzero((ours == ref["inner"])[off_edge])
            agree["ring"] += np.count_nonzero(ours == ref["ring"])
            n_pixels += ours.size
            n_instances += int(labels.max())
            n_tiles += len(tiles[0])
            off_edge_pixels = np.count_nonzero(off_edge)

    n = len(folders)
    print(f"{n} images {labels.shape[1]}x{labels.shape[2]}, {n_instances / n:.0f} instances per image, "
          f"sigma={SIGMA} width={WIDTH}, tiles {TILE_SIZE}/{OVERLAP} min_area={MIN_AREA}\n")
    print(f"{'step':<40}{'s/image':>10}{'images/s':>10}")
    for name, label in [("maps", "maps, vectorised (compute_maps)"), ("loop", "maps, per-instance loop"),
                        ("tiles", f"make_tiles ({n_tiles / n:.1f} tiles/image)"), ("save", "save_tiles (npz+tsv)")]:
        print(f"{label:<40}{seconds[name] / n:>10.4f}{n / seconds[name]:>10.2f}")
    print(f"\nspeed-up of vectorised maps over the loop: {seconds['loop'] / seconds['maps']:.0f}x\n")
    print("pixel agreement with the loop:")
    print(f"  center, |diff| <= 1e-3 (float16 storage)          {100 * agree['center'] / n_pixels:8.4f} %")
    print(f"  boundary vs ring & mask (inner border)            {100 * agree['inner'] / n_pixels:8.4f} %")
    print(f"  same, off the {WIDTH}-px image-edge band               "
          f"{100 * agree['inner_off_edge'] / (n * off_edge_pixels):8.4f} %")
    print(f"  boundary vs dilation XOR erosion (inner+outer)    {100 * agree['ring'] / n_pixels:8.4f} %")


if __name__ == "__main__":
    main()
