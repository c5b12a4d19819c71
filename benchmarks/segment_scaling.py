"""Time and peak memory of `cellseg.inference.segment` against image size, on synthetic slides tiled from
real tissue (MoNuSeg's 1000 px training images, mirrored alternately so that seams are smooth).

Each size runs in its own process (so that its peak RSS, `ru_maxrss`, is its own): the slide is
written tile by tile as a pyramidal OME-TIFF (levels 1/4, 1/16, ..., 0.25 µm/px), its right 40 %
(`--glass`) bare glass, then segmented block by block from the
file at a `cells` operating point (`--score`, mask threshold 0.5, NMS across classes at IoU
0.5) and its outputs written (labels.tif, GeoJSON, CSV, overlay). The model is resnet18-FPN
with random weights unless `--weights` names trained ones: time and memory depend on the
network and the number of detections, not on accuracy; `--max-dets` caps the detections per
tile as a trained model's would be.

`--detector dark-blobs` replaces the network by a stand-in that costs almost nothing
(`dark_blobs.DarkBlobDetector`): nuclei as the connected components of dark pixels, in
`CellMaskRCNN.detect`'s output format. It measures everything around the network (lazy tile
reads, seam merging, fusion, tiled label writing, GeoJSON, CSV, overlay) at sizes whose network
time a CPU cannot afford; the network's own memory is per batch of tiles, the same at every
image size. Run from the repository root:

    PYTHONPATH=src python benchmarks/segment_scaling.py --sizes 1000 2000
    PYTHONPATH=src python benchmarks/segment_scaling.py --sizes 1000 4000 16000 20000 --detector dark-blobs
    PYTHONPATH=src python benchmarks/segment_scaling.py --sizes 4000 16000 20000 --device cuda

`--tissue on off` segments each size both ways (`segment.tissue`), each in its own process.
`--default-malloc` measures without `cellseg.workflow.allocator.release_freed_memory`, the baseline.
"""

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from dark_blobs import DarkBlobDetector

MONUSEG = Path(__file__).resolve().parents[2] / "shared" / "data" / "monuseg" / "train"


def write_slide(path: Path, size: int, source: Path, tile: int = 512, glass: float = 0.4, mpp: float = 0.25) -> None:
    """A (size, size, 3) uint8 pyramidal OME-TIFF (levels 1/4, 1/16, ... in SubIFDs, `mpp`
    µm/px at level 0) made of the source images, one tile at a time; its right `glass` part is
    bare glass."""
    from cellseg.common.images import read_image

    pieces = np.stack([read_image(folder / "image.tif") for folder in sorted(source.iterdir())[:4]])
    side = pieces.shape[1]
    tissue_end = int(size * (1 - glass))

    def mirrored(coords):
        """Piece index along one axis and the coordinate inside it, every other piece mirrored."""
        piece, inside = np.divmod(coords, side)
        return piece, np.where(piece % 2 == 0, inside, side - 1 - inside)

    def pixel_block(y0, x0, step, height):
        out = np.zeros((tile, tile, 3), np.uint8)
        rows = np.arange(y0, min(y0 + tile, height)) * step
        cols = np.arange(x0, min(x0 + tile, height)) * step
        row_piece, ry = mirrored(rows)
        col_piece, cx = mirrored(cols)
        piece = (row_piece[:, None] + col_piece[None]) % len(pieces)
        out[: len(ry), : len(cx)] = pieces[piece, ry[:, None], cx[None]]
        out[: len(ry), : len(cx)][:, cols >= tissue_end] = (236, 234, 238)
        return out

    steps = [4**k for k in range(8) if size // 4**k >= tile][:4]
    options = {"tile": (tile, tile), "dtype": np.uint8, "photometric": "rgb", "compression": "zlib"}
    with tifffile.TiffWriter(path, bigtiff=size * size * 3 > 2**31, ome=True) as tif:
        for k, step in enumerate(steps):
            height = -(-size // step)
            tiles = (pixel_block(y, x, step, height) for y in range(0, height, tile) for x in range(0, height, tile))
            extra = {"subifds": len(steps) - 1, "metadata": {"axes": "YXS", "PhysicalSizeX": mpp, "PhysicalSizeY": mpp,
                                                             "PhysicalSizeXUnit": "µm"}} if k == 0 else {"subfiletype": 1}
            tif.write(tiles, shape=(height, height, 3), **options, **extra)


def run_one(args) -> dict:
    """Segment one synthetic slide of `args.one` px square; its seconds and peak RSS."""
    from cellseg.inference.fold_ensemble import FoldEnsemble
    from cellseg.inference.predict import predict_settings
    from cellseg.model.mask_rcnn import build_model
    from cellseg.outputs.segment_file import segment_file
    from cellseg.workflow.allocator import release_freed_memory
    from cellseg.workflow.configuration import resolve_train_config

    if not args.default_malloc:
        release_freed_memory()  # as the segment_image job does
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = resolve_train_config({
        "preset": "demo", "backbone": "resnet18", "weights": "none", "fpn_channels": 128,
        "box_detections_per_img": args.max_dets,
    })
    models = [DarkBlobDetector() for _ in range(args.folds)] if args.detector == "dark-blobs" else []
    for k in range(args.folds if args.detector == "network" else 0):
        torch.manual_seed(k)
        model = build_model(cfg, 1, tile_size=args.tile_size, pretrained=False)
        if args.weights:
            model.load_state_dict(torch.load(args.weights[k], map_location="cpu", weights_only=True))
        models.append(model.to(device).eval())
    # The ensemble as load_fold_ensemble builds it for the segment job (predict settings with
    # amp resolved for the device, fusion settings), without calibration or TTA; one class.
    predict = {"tile_size": args.tile_size, "overlap": 64, "tta": [], "batch_size": 4, "amp": args.amp,
               "tta_fusion": {"iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg"}}  # fmt: skip
    fusion = {"weights": None, "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg", "absent_as_zero": False}
    ensemble = FoldEnsemble(models, [None] * len(models), device, predict_settings(predict, device), fusion, mpp=0.25)
    point = {"point": "cells", "score_thresholds": {1: args.score}, "mask_thresholds": {1: 0.5}, "nms_threshold": 0.5}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        start = time.monotonic()
        write_slide(tmp / "slide.ome.tif", args.one, MONUSEG, glass=args.glass)
        written = time.monotonic() - start
        outputs = {k: tmp / f for k, f in [("labels", "labels.tif"), ("geojson", "cells.geojson"),
                                            ("csv", "cells.csv"), ("overlay", "overlay.png"), ("tissue", "tissue.png")]}
        start = time.monotonic()
        counts = segment_file(tmp / "slide.ome.tif", outputs, ensemble, point, ["nucleus"], block=args.block, margin=128,
                              tissue=args.tissue[0] == "on")
        seconds = time.monotonic() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"px": args.one, "megapixels": args.one**2 / 1e6, "seconds": round(seconds, 1),
            "s_per_mpx": round(seconds / (args.one**2 / 1e6), 2), "peak_rss_mb": round(peak_mb),
            "cells": sum(counts.values()), "tissue": args.tissue[0], "glass": args.glass, "slide_written_s": round(written, 1), "device": args.device,
            "threads": args.threads, "folds": args.folds, "detector": args.detector,
            "malloc": "default" if args.default_malloc else "release"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folds", type=int, default=1)
    parser.add_argument("--detector", choices=["network", "dark-blobs"], default="network")
    parser.add_argument("--weights", nargs="*", help="one state dict per fold (resnet18-FPN-128 demo preset, 1 class)")
    parser.add_argument("--tile-size", type=int, default=512)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--max-dets", type=int, default=300, help="detections per tile at most")
    parser.add_argument("--score", type=float, default=0.0, help="score threshold (of the cells point)")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], default="none",
                        help="autocast of the network (resolved for the device: none on the CPU)")
    parser.add_argument("--default-malloc", action="store_true",
                        help="keep glibc's default allocator thresholds (the baseline of cellseg.workflow.allocator)")
    parser.add_argument("--workdir", default=None, help="where the synthetic slide is written")
    parser.add_argument("--tissue", nargs="+", choices=["on", "off"], default=["on"],
                        help="segment.tissue; both: each size segmented both ways, one process each")
    parser.add_argument("--glass", type=float, default=0.4, help="part of the slide that is bare glass")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args)))
        return
    rows = []
    for size in args.sizes:
        for tissue in args.tissue:
            command = [sys.executable, __file__, *sys.argv[1:], "--one", str(size), "--tissue", tissue]
            out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    print("| px | detector | tissue | malloc | megapixels | seconds | s / Mpx | peak RSS (MiB) | cells |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['px']}² | {r['detector']} | {r['tissue']} | {r['malloc']} | {r['megapixels']:.0f} | {r['seconds']} "
              f"| {r['s_per_mpx']} | {r['peak_rss_mb']} | {r['cells']} |")


if __name__ == "__main__":
    main()
