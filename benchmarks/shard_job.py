"""Job time per image of one preprocessing shard (maps, then tiles), this checkout's code
against its earlier settings, in one run: mask ids renumbered by `np.unique` (a sort) and the
shard files deflated at numpy's default zlib level 6.

The work of the `compute_maps` and `make_tiles` jobs of one shard, in-process (no Snakemake,
no start-up), on N training images of 256 px hard-linked from 40 demo images (4 classes, RGBA
LZW TIFFs, float64 masks, as `preprocess_throughput.py` writes them). The two settings
alternate for `--repeats` rounds; the table gives each one's best round and the shard files'
sizes. Run from the repository root:

    PYTHONPATH=src .venv/bin/python benchmarks/shard_job.py [--images 300] [--repeats 3]
"""

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import numpy as np
from preprocess_throughput import CLASSES, write_dataset

from cellseg.common import files, images
from cellseg.data.dataset import load_sample
from cellseg.data.target_maps import compute_maps, open_maps_shard, save_maps_shard
from cellseg.data.tiles import make_tiles, save_tiles_shard

CENTER_SIGMA, BOUNDARY_WIDTH = 3.0, 1
TILE_SIZE, OVERLAP, MIN_AREA = 256, 64, 16


def relabel_by_sort(labels: np.ndarray) -> np.ndarray:
    """The earlier `relabel_consecutive`: `np.unique` with `return_inverse`."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int32)
    return inverse if ids[0] == 0 else inverse + 1


@contextlib.contextmanager
def earlier_settings():
    """Patch in the sort-based renumbering and zlib level 6 for the block (`read_mask` and
    `npz_writer` look them up in `cellseg.common.images` and `cellseg.common.files` at call time)."""
    relabel, level = images.relabel_consecutive, files.NPZ_LEVEL
    images.relabel_consecutive, files.NPZ_LEVEL = relabel_by_sort, 6
    try:
        yield
    finally:
        images.relabel_consecutive, files.NPZ_LEVEL = relabel, level


def run_shard(source: dict, image_ids: list[str], out: Path) -> tuple[float, int]:
    """Seconds for the maps and tiles of `image_ids`, and the bytes of the files written."""
    start = time.perf_counter()
    maps = (
        (i, compute_maps(load_sample(source, i).labels, CENTER_SIGMA, BOUNDARY_WIDTH)) for i in image_ids
    )
    save_maps_shard(out / "maps.npz", maps)
    with open_maps_shard(out / "maps.npz") as maps_of:

        def tiles():
            for i in image_ids:
                sample, m = load_sample(source, i), maps_of(i)
                yield make_tiles(
                    sample.image, sample.labels, m["center"], m["boundary"], TILE_SIZE, OVERLAP, True,
                    MIN_AREA, image_id=i, class_names=CLASSES,
                )  # fmt: skip

        save_tiles_shard(out / "tiles.npz", out / "tiles.tsv", tiles())
    seconds = time.perf_counter() - start
    return seconds, sum(path.stat().st_size for path in out.iterdir())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "data"
        write_dataset(root, args.images, n_templates=40)
        source = {"path": str(root), "classes": CLASSES, "format": "reference"}
        image_ids = sorted(p.name for p in (root / "train").iterdir())
        best = {}
        for _ in range(args.repeats):
            for name, settings in [("earlier", earlier_settings), ("now", contextlib.nullcontext)]:
                out = Path(tmp) / name
                out.mkdir(exist_ok=True)
                with settings():
                    seconds, size = run_shard(source, image_ids, out)
                best[name] = min(best.get(name, (np.inf, 0)), (seconds, size))
    print(f"| setting | s per image | shard files, MiB |\n| --- | --- | --- |")
    for name, (seconds, size) in best.items():
        print(f"| {name} | {seconds / args.images:.4f} | {size / 2**20:.1f} |")
    print(f"ratio (earlier / now): {best['earlier'][0] / best['now'][0]:.2f}x")


if __name__ == "__main__":
    main()
