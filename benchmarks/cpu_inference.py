"""CPU inference speed of one trained fold, per backend and setting, in megapixels per second
per core, against eager PyTorch fp32 on the same image and the same model, in one run.

Two trained models, each on a 1000 x 1000 px H&E-like image: the demo fold 0 on a mosaic of 16
synthetic demo images (250 px), the CoNSeP fold 0 on CoNSeP test image 10 put back together
from its 16 patches. Each setting runs `cellseg.inference.predict.predict_image` with the predict
settings of the model's run (the default TTA, hflip; tiles, overlap, batch of the run) in a
process of its own (its threads and memory its own), once to warm up on a 256 px crop, then
timed on the whole image. "2 processes" runs two such processes at once, one thread each,
and counts both images. Every setting's instances are compared with the baseline's
(`cellseg.scoring.agreement`: same class, mask IoU >= 0.95, and >= 0.5 for the INT8 models,
which are not meant to be equal; scores). The onnxruntime-int8 rows read each run's quantised
fold: `snakemake results/export/fold0.int8.onnx` in the run's folder first. Run from the
repository root:

    PYTHONPATH=src python benchmarks/cpu_inference.py --demo-run /work/runs/demo \\
        --consep-run /work/runs/consep --consep-data ../shared/data/consep

A 4000 x 4000 px slide (`--slide 4000`) is segmented end to end instead
(`cellseg.outputs.segment_file.segment_file`, one fold, the run's `cells` point) with each of
`--slide-backends` (torch and onnxruntime-int8 by default), with time, peak RSS and the
seconds of each stage of the path. `--roofline` compares the eager network's FLOP rate with
this core's fp32 matrix product; `--ort-profile` prints ONNX Runtime's operator profile of
the CoNSeP INT8 fold.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SETTINGS = {
    # name: (backend, threads, processes, variant)
    "torch eager fp32, 1 thread (baseline)": ("torch", 1, 1, ""),
    "torch eager fp32, 2 threads": ("torch", 2, 1, ""),
    "torch eager fp32, 2 processes x 1 thread": ("torch", 1, 2, ""),
    "torch channels_last, 1 thread": ("torch", 1, 1, "channels_last"),
    "torch.compile (inductor) backbone, 1 thread": ("torch", 1, 1, "compile"),
    "onnxruntime fp32, 1 thread": ("onnxruntime", 1, 1, ""),
    "onnxruntime fp32, 2 threads": ("onnxruntime", 2, 1, ""),
    "onnxruntime fp32, 2 processes x 1 thread": ("onnxruntime", 1, 2, ""),
    "onnxruntime dynamic INT8 heads (MatMul), 1 thread": ("onnxruntime", 1, 1, "int8-heads"),
    "onnxruntime dynamic INT8 heads + backbone (MatMul, Conv), 1 thread": ("onnxruntime", 1, 1, "int8-all"),
    "onnxruntime-int8 (static INT8, the run's quantise_fold), 1 thread": ("onnxruntime-int8", 1, 1, ""),
    "onnxruntime-int8 (static INT8, the run's quantise_fold), 2 processes x 1 thread": ("onnxruntime-int8", 1, 2, ""),
}
RUNS = {
    "demo": {"train": {"preset": "demo"}, "tile": 128, "predict_tile": 512, "overlap": 64},
    "consep": {"train": {"preset": "demo"}, "tile": 256, "predict_tile": 256, "overlap": 32},
}
CLASSES = 4


def demo_image(workdir: Path) -> np.ndarray:
    """1000 px mosaic of 16 synthetic demo test images of 250 px."""
    from cellseg.common.images import read_image
    from cellseg.data.demo import write_demo_dataset

    write_demo_dataset(workdir / "demo", seed=7, n_train=1, n_test=16, min_size=250, max_size=250)
    names = sorted((workdir / "demo" / "test_release").glob("*.tif"))
    rows = [np.concatenate([read_image(p) for p in names[r * 4 : r * 4 + 4]], 1) for r in range(4)]
    return np.concatenate(rows, 0)


def consep_image(data: Path) -> np.ndarray:
    """CoNSeP test image 10 (1000 px) from its 16 patches of 256 px (origins 0, 256, 512, 744)."""
    from cellseg.common.images import read_image

    image = np.zeros((1000, 1000, 3), np.uint8)
    origins = [0, 256, 512, 744]
    for k in range(16):
        y, x = origins[k // 4], origins[k % 4]
        image[y : y + 256, x : x + 256] = read_image(data / "test_release" / f"test_10_{k:03d}.tif")
    return image


def load_model(run: str, run_dir: Path, backend: str, variant: str, workdir: Path):
    """Fold 0 of `run` for one setting; `onnxruntime-int8` reads the run's own quantised fold
    (`snakemake results/export/fold0.int8.onnx` in the run's folder)."""
    import torch

    from cellseg.inference.onnx_backend import OnnxModel
    from cellseg.inference.predict import load_model_for_inference
    from cellseg.model.onnx_export import onnx_bytes
    from cellseg.workflow.configuration import resolve_train_config

    if backend == "onnxruntime-int8":
        int8 = run_dir / "results/export/fold0.int8.onnx"
        if not int8.is_file():
            raise FileNotFoundError(f"{int8}: run `snakemake results/export/fold0.int8.onnx` in {run_dir} first")
        return OnnxModel(int8, threads=torch.get_num_threads())
    spec = RUNS[run]
    cfg = resolve_train_config(spec["train"], predict_tile_size=spec["predict_tile"])
    weights = run_dir / "results/train/fold0/model_best.pt"
    model = load_model_for_inference(weights, cfg, CLASSES, torch.device("cpu"), tile_size=spec["tile"])
    if backend == "onnxruntime":
        if not variant:
            return OnnxModel(onnx_bytes(model), threads=torch.get_num_threads())
        return OnnxModel(quantised(onnx_bytes(model), variant, workdir), threads=torch.get_num_threads())
    if variant == "channels_last":
        model = model.to(memory_format=torch.channels_last)
    if variant == "compile":
        model.backbone = torch.compile(model.backbone)
    return model


def quantised(model: bytes, variant: str, workdir: Path) -> Path:
    """Dynamic INT8 (weights int8, activations quantised per call) of the MatMul / Gemm nodes
    (the box head), or of those and every Conv (backbone, FPN, RPN, mask head)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    source, prepared, out = workdir / "fp32.onnx", workdir / "prepared.onnx", workdir / f"{variant}.onnx"
    source.write_bytes(model)
    quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
    ops = ["MatMul", "Gemm"] + (["Conv"] if variant == "int8-all" else [])
    quantize_dynamic(str(prepared), str(out), op_types_to_quantize=ops, weight_type=QuantType.QUInt8 if "Conv" in ops else QuantType.QInt8)
    return out


def predict_settings(run: str) -> dict:
    """The run's predict settings with the default TTA (config.yaml: hflip)."""
    spec = RUNS[run]
    fusion = {"iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg", "absent_as_zero": False}
    return {"tile_size": spec["predict_tile"], "overlap": spec["overlap"], "tta": ["hflip"], "batch_size": 4, "tta_fusion": fusion}


def run_one(args) -> None:
    """One process of one setting: warm up, time `predict_image` on the image, save the instances."""
    import torch

    from cellseg.inference.predict import predict_image

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    image = np.load(workdir / f"{args.run}.npy")
    scratch = workdir / f"q_{os.getpid()}"
    scratch.mkdir()
    model = load_model(args.run, Path(args.run_dir), args.backend, args.variant, scratch)
    settings = predict_settings(args.run)
    cpu = torch.device("cpu")
    predict_image(model, image[:256, :256], device=cpu, **settings)
    start = time.perf_counter()
    found = predict_image(model, image, device=cpu, **settings)
    seconds = time.perf_counter() - start
    found.save(args.save)
    print(json.dumps({"seconds": seconds}))


def measure(run: str, run_dir: Path, name: str, workdir: Path) -> dict:
    """Seconds of one setting (`SETTINGS[name]`), the processes started together."""
    backend, threads, processes, variant = SETTINGS[name]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    jobs = []
    for k in range(processes):
        command = [sys.executable, __file__, "--one", "--run", run, "--run-dir", str(run_dir), "--backend", backend,
                   "--threads", str(threads), "--variant", variant, "--workdir", str(workdir),
                   "--save", str(workdir / f"{run}_{k}.npz")]  # fmt: skip
        jobs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [job.communicate() for job in jobs]
    for job, (out, err) in zip(jobs, results):
        if job.returncode:
            return {"error": err.strip().splitlines()[-1][:160] if err.strip() else f"exit {job.returncode}"}
    seconds = max(json.loads(out.strip().splitlines()[-1])["seconds"] for out, _ in results)
    cores = threads * processes
    return {"seconds": seconds, "mpx_s_core": processes * 1.0 / seconds / cores}


STAGES = {
    # stage: the functions whose cumulative time it is (cProfile, file:function), none inside another
    "tile reads (TIFF decode)": ["image_reader.py:read"],
    "network (ONNX Runtime / torch forward)": ["run", "mask_rcnn.py:detect"],
    "mask paste into windows (ONNX Runtime)": ["onnx_backend.py:paste_windows"],
    "tile instances and seam merge": ["predict.py:_tile_instances", "predict.py:_merge_duplicates"],
    "TTA fusion (WBF)": ["ensemble.py:fuse_instance_sets"],
    "cells point (thresholds, NMS, one cell per pixel)": ["operating_points.py:apply_point"],
    "block seams (seam band, duplicates across blocks)": ["cell_stream.py:duplicate", "cell_stream.py:add", "cell_stream.py:release", "cell_stream.py:_finished"],
    "writers (labels.tif, GeoJSON, CSV, overlay)": [
        "cell_writers.py:numbered_table", "segment_export.py:geojson_features", "label_pyramid.py:spool_cells",
        "segment_export.py:draw_outlines", "label_pyramid.py:write_label_pyramid", "segment_export.py:write_overlay",
    ],
}


def write_slide(path: Path, image: np.ndarray, size: int) -> None:
    """A (size, size, 3) tiled TIFF of `image` repeated, every other copy mirrored (no seams)."""
    import tifffile

    side = image.shape[0]
    index = np.arange(size)
    piece, inside = np.divmod(index, side)
    coords = np.where(piece % 2 == 0, inside, side - 1 - inside)
    tifffile.imwrite(path, image[coords[:, None], coords[None]], tile=(512, 512), photometric="rgb", compression="zlib")


def run_slide(args) -> None:
    """Segment the slide with CoNSeP fold 0 (`segment_file`, cells point of its run); seconds,
    peak RSS and, with `--profile`, the seconds of each of `STAGES`."""
    import cProfile
    import pstats
    import resource

    import torch

    from cellseg.inference.fold_ensemble import FoldEnsemble
    from cellseg.inference.operating_points import read_point
    from cellseg.outputs.segment_file import segment_file

    torch.set_num_threads(args.threads)
    workdir = Path(args.workdir)
    model = load_model("consep", Path(args.run_dir), args.backend, "", workdir)
    fusion = {"weights": None, "iou_thr": 0.55, "skip_box_thr": 0.0, "conf_type": "avg", "absent_as_zero": False}
    ensemble = FoldEnsemble([model], [None], torch.device("cpu"), {**predict_settings("consep"), "amp": "none"}, fusion)
    point = read_point(Path(args.run_dir) / "results/tune/cells.json")
    out = workdir / f"out_{args.backend}"
    out.mkdir()
    outputs = {key: out / name for key, name in (("labels", "labels.tif"), ("geojson", "cells.geojson"), ("csv", "cells.csv"), ("overlay", "overlay.png"))}
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    counts = segment_file(workdir / "slide.tif", outputs, ensemble, point, [f"class{k}" for k in range(1, 5)])
    profile.disable()
    seconds = time.perf_counter() - start
    stats = pstats.Stats(profile).stats
    stages = {
        stage: sum(v[3] for (file, _, func), v in stats.items() for name in names if f"{Path(file).name}:{func}" == name or func == name and "onnxruntime" in file)
        for stage, names in STAGES.items()
    }
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak, "cells": sum(counts.values()), "stages": stages}))


def slide(args) -> None:
    """`--slide N`: the end-to-end segment of an N px slide with each of `--slide-backends`."""
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        write_slide(workdir / "slide.tif", consep_image(args.consep_data), args.slide)
        print(f"| {args.slide} px slide, CoNSeP fold 0, 1 thread | seconds | Mpx/s | peak RSS MB | cells |")
        print("| --- | --- | --- | --- | --- |")
        results = {}
        for backend in args.slide_backends:
            command = [sys.executable, __file__, "--one-slide", "--run-dir", str(args.consep_run), "--backend", backend,
                       "--threads", "1", "--workdir", str(workdir)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            if done.returncode:
                print(f"| {backend} | fails: {done.stderr.strip().splitlines()[-1][:160]} | | | |")
                continue
            result = results[backend] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {backend} | {result['seconds']:.0f} | {args.slide**2 / 1e6 / result['seconds']:.3f} | {result['peak_rss_mb']:.0f} | {result['cells']} |", flush=True)
        for backend, result in results.items():
            print(f"\n| stage ({backend}) | seconds | share |\n| --- | --- | --- |")
            for stage, seconds in result["stages"].items():
                print(f"| {stage} | {seconds:.1f} | {seconds / result['seconds']:.0%} |")


def roofline(args) -> None:
    """`--roofline`: this core's fp32 matrix-product rate against the rate the eager fp32
    network reaches on 4 prediction tiles of each run's image (FLOPs counted by torch), 1 thread."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(1)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(5):
        torch.mm(a, b)
    peak = 5 * 2 * 2048**3 / (time.perf_counter() - start) / 1e9
    print(f"fp32 matrix product (2048 x 2048, 1 thread): {peak:.1f} GFLOP/s")
    with tempfile.TemporaryDirectory() as tmp:
        for run, run_dir in (("demo", args.demo_run), ("consep", args.consep_run)):
            image = demo_image(Path(tmp)) if run == "demo" else consep_image(args.consep_data)
            model = load_model(run, run_dir, "torch", "", Path(tmp))
            size = RUNS[run]["predict_tile"]
            tiles = [torch.from_numpy(np.ascontiguousarray(image[y : y + size, x : x + size])).permute(2, 0, 1) / 255.0
                     for y in (0, 1000 - size) for x in (0, 1000 - size)]  # fmt: skip
            model.detect(tiles[:1])
            with FlopCounterMode(display=False) as counter:
                model.detect(tiles)
            start = time.perf_counter()
            model.detect(tiles)
            seconds = time.perf_counter() - start
            flops = counter.get_total_flops()
            print(f"{run}: 4 tiles of {size} px, {flops / 1e9:.1f} GFLOP in {seconds:.2f} s = {flops / seconds / 1e9:.1f} GFLOP/s, {flops / seconds / 1e9 / peak:.0%} of the matrix product's rate")


def ort_profile(args) -> None:
    """`--ort-profile`: ONNX Runtime's own profile of the CoNSeP run's INT8 fold on its 1000 px
    image (`predict_image` as above, 1 thread): each operator type's share of the kernel time."""
    import collections

    import onnxruntime as ort
    import torch

    from cellseg.inference.onnx_backend import OnnxModel
    from cellseg.inference.predict import predict_image

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.consep_run / "results/export/fold0.int8.onnx"
        model = OnnxModel(path, threads=1)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        options.enable_profiling, options.profile_file_prefix = True, str(Path(tmp) / "profile")
        model.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        image = consep_image(args.consep_data)
        predict_image(model, image, device=torch.device("cpu"), **predict_settings("consep"))
        events = json.loads(Path(model.session.end_profiling()).read_text())
    seconds = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            seconds[event["args"]["op_name"]] += event["dur"] / 1e6
    total = sum(seconds.values())
    print("| operator | seconds | share |\n| --- | --- | --- |")
    for name, value in seconds.most_common(8):
        print(f"| {name} | {value:.2f} | {value / total:.0%} |")
    print(f"| all kernels | {total:.2f} | |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-run", type=Path, default=Path("/work/runs/demo"))
    parser.add_argument("--consep-run", type=Path, default=Path("/work/runs/consep"))
    parser.add_argument("--consep-data", type=Path, default=Path("../shared/data/consep"))
    parser.add_argument("--settings", nargs="*", help="names of SETTINGS to run (default: all)")
    parser.add_argument("--slide", type=int, help="segment a slide of this side end to end (e.g. 4000)")
    parser.add_argument("--slide-backends", nargs="+", default=["torch", "onnxruntime-int8"], help="the backends --slide runs, the baseline first")
    parser.add_argument("--roofline", action="store_true", help="only the eager network's FLOP rate against the core's")
    parser.add_argument("--ort-profile", action="store_true", help="only ONNX Runtime's operator profile of the CoNSeP INT8 fold")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one-slide", action="store_true", help=argparse.SUPPRESS)
    for hidden in ("--run", "--run-dir", "--backend", "--variant", "--workdir", "--save"):
        parser.add_argument(hidden, default="", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        run_one(args)
        return
    if args.one_slide:
        run_slide(args)
        return
    if args.slide:
        slide(args)
        return
    if args.roofline:
        roofline(args)
        return
    if args.ort_profile:
        ort_profile(args)
        return
    from cellseg.common.instances import InstanceSet
    from cellseg.scoring.agreement import agreement

    names = args.settings or list(SETTINGS)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        np.save(workdir / "demo.npy", demo_image(workdir))
        np.save(workdir / "consep.npy", consep_image(args.consep_data))
        print("| setting | demo Mpx/s/core | × | CoNSeP Mpx/s/core | × | instances matched at IoU 0.95 (0.5), demo; CoNSeP | max score diff |")
        print("| --- | --- | --- | --- | --- | --- | --- |")
        baseline = {}
        for name in names:
            cells, matched, diffs = [], [], []
            for run, run_dir in (("demo", args.demo_run), ("consep", args.consep_run)):
                result = measure(run, run_dir, name, workdir)
                if "error" in result:
                    cells += [f"fails: {result['error']}", ""]
                    matched.append("")
                    continue
                found = InstanceSet.load(workdir / f"{run}_0.npz")
                if name == names[0]:
                    baseline[run] = (result["mpx_s_core"], found)
                speed, reference = baseline[run]
                check, loose = agreement(reference, found), agreement(reference, found, iou=0.5)
                cells += [f"{result['mpx_s_core']:.4f}", f"{result['mpx_s_core'] / speed:.2f}"]
                matched.append(f"{check.fraction:.4f} ({loose.fraction:.4f}) of {check.n_a}")
                diffs.append(check.max_score_diff)
            print(f"| {name} | {' | '.join(cells)} | {'; '.join(matched)} | {max(diffs, default=0):.1e} |", flush=True)


if __name__ == "__main__":
    main()
