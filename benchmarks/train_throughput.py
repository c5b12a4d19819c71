"""Training and inference throughput of the Mask R-CNN on synthetic tiles, to size runs and presets.

Each tile holds about 30 random ellipses (cells) of 4 classes. The model is built from a train
preset with random initialisation and the tile size as `min_size` (no resize). Training steps
(forward under autocast, backward, SGD step) and eval-mode batches are timed after warmup.
A random model's scores pass any threshold, so every image would reach the detection cap and
the mask head would run on hundreds of boxes; inference is therefore timed with the cap set to
the cells per tile, about what a trained model keeps.
Run from the repository root:

    PYTHONPATH=src python benchmarks/train_throughput.py --backbone resnet18 --tile-size 128 --batch 4

`--box-head standard cascade` measures both box heads in one process on the same batch, their
steps timed in turns (median step times, see `timed_rates`), and prints the cascade's
step-time ratio. On a CPU the peak memory is the process's, so a later row's
includes the earlier rows' peaks.
"""

import argparse
import platform
import resource
import time

import numpy as np
import torch

from cellseg.data.target_maps import compute_maps
from cellseg.model.mask_rcnn import build_model
from cellseg.training.data import instances_from_labels
from cellseg.workflow.configuration import load_schema, resolve_train_config

N_CLASSES = 4
CELLS_PER_TILE = 30
AMP_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}



def choices(key: str) -> list[str]:
    """The values the schema allows for a train key."""
    return [v for v in load_schema()["properties"]["train"]["properties"][key]["enum"] if v is not None]

def synthetic_tile(rng: np.random.Generator, size: int) -> tuple[torch.Tensor, dict]:
    """`(3, S, S)` float32 image in [0, 1] and its target (with centre / boundary maps)."""
    rows, cols = np.mgrid[:size, :size]
    labels = np.zeros((N_CLASSES, size, size), np.int32)
    image = rng.normal(0.15, 0.03, (size, size, 3))
    radius = max(3.0, size / 20)
    for i in range(CELLS_PER_TILE):
        cy, cx = rng.uniform(0, size, 2)
        ry, rx = rng.uniform(0.6, 1.4, 2) * radius
        inside = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
        plane = labels[rng.integers(N_CLASSES)]
        plane[inside & (plane == 0)] = i + 1
        image[inside] += rng.uniform(0.3, 0.7, 3)
    target = instances_from_labels(labels)
    maps = compute_maps(labels, sigma=2.0, width=1)
    target["center"] = torch.from_numpy(maps["center"].astype(np.float32))
    target["boundary"] = torch.from_numpy(maps["boundary"].astype(np.float32))
    image = torch.from_numpy(np.clip(image, 0, 1).astype(np.float32)).permute(2, 0, 1)
    return image, target


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak CUDA memory allocated by tensors, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # KiB on Linux


def train_step(model, optimizer, scaler, images, targets, device, dtype) -> None:
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        loss = sum(model(images, targets).values())
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


def timed_rate(fn, n_steps: int, n_images: int, device: torch.device) -> float:
    """Images per second of `n_steps` calls of `fn` (each on `n_images` images)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(n_steps):
        fn()
    synchronize(device)
    return n_steps * n_images / (time.perf_counter() - start)


def timed_rates(fns: dict, n_steps: int, n_images: int, device: torch.device) -> dict[str, float]:
    """Images per second of each of `fns` (each call on `n_images` images) from its median call
    time over `n_steps` calls. The calls take turns (one of each per round) and the median drops
    the calls that another job's burst slowed, so a shared machine's load falls on all alike."""
    seconds = {name: [] for name in fns}
    for _ in range(n_steps):
        for name, fn in fns.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            seconds[name].append(time.perf_counter() - start)
    return {name: n_images / float(np.median(times)) for name, times in seconds.items()}


def prepare(cfg: dict, args, images, targets, device: torch.device, dtype) -> tuple:
    """The training step and the inference of the model of `cfg` (closures), warmed up, and the
    peak memory of its warmup steps."""
    torch.manual_seed(0)
    model = build_model(cfg, N_CLASSES).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type, enabled=args.precision == "fp16" and device.type == "cuda")
    model.roi_heads.detections_per_img = CELLS_PER_TILE  # used at inference only

    def step():
        model.train()
        train_step(model, optimizer, scaler, images, targets, device, dtype)

    @torch.no_grad()
    def infer():
        model.eval()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            model.detect(images)  # what the pipeline runs: masks kept inside their windows

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(2):
        step()
    memory = peak_memory_mib(device)
    infer()
    return step, infer, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", choices=choices("backbone"), default="resnet18")
    parser.add_argument("--preset", choices=["demo", "gpu"], default="demo", help="sampling and size settings")
    parser.add_argument("--tile-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--precision", choices=list(AMP_DTYPES), default="fp32")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after 2 warmup steps)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--fpn-channels", type=int, default=None, help="default: the preset's (demo 128, gpu 256)")
    parser.add_argument("--aux-heads", action="store_true", help="add the centre / boundary heads")
    parser.add_argument(
        "--box-head", nargs="+", choices=choices("box_head"), default=["standard"],
        help="one row per box head, timed in turns on the same batch, with their step-time ratio",
    )  # fmt: skip
    parser.add_argument("--profile", action="store_true", help="print the top ops of 2 training steps (last box head)")
    args = parser.parse_args()

    device = pick_device(args.device)
    dtype = AMP_DTYPES[args.precision]
    rng = np.random.default_rng(0)
    batch = [synthetic_tile(rng, args.tile_size) for _ in range(args.batch)]
    images = [image.to(device) for image, _ in batch]
    targets = [{k: v.to(device) for k, v in target.items()} for _, target in batch]
    n_instances = sum(len(t["labels"]) for t in targets) / args.batch
    steps, infers, memory = {}, {}, {}
    for box_head in args.box_head:
        cfg = resolve_train_config({
            "preset": args.preset, "backbone": args.backbone, "weights": "none", "aux_heads": args.aux_heads,
            "min_size": args.tile_size, "max_size": args.tile_size, "multiscale_sizes": [],
            "fpn_channels": args.fpn_channels, "box_head": box_head,
        })  # fmt: skip
        steps[box_head], infers[box_head], memory[box_head] = prepare(cfg, args, images, targets, device, dtype)
    train_rates = timed_rates(steps, args.steps, args.batch, device)
    infer_rates = timed_rates(infers, args.steps, args.batch, device)

    print(f"device: {device_name(device)}; torch {torch.__version__}")
    print(f"{args.preset} preset sampling, {n_instances:.0f} instances per tile, {args.steps} timed steps, "
          f"inference capped at {CELLS_PER_TILE} detections per tile")
    print("| backbone | box head | FPN channels | tile | batch | precision | train img/s | infer img/s | peak memory MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for box_head in args.box_head:
        print(f"| {args.backbone} | {box_head} | {cfg['fpn_channels']} | {args.tile_size} | {args.batch} | {args.precision} "
              f"| {train_rates[box_head]:.2f} | {infer_rates[box_head]:.2f} | {memory[box_head]:.0f} |")
    first, *others = args.box_head
    for box_head in others:  # step time is the inverse of throughput
        print(f"{box_head} / {first}: training step time {train_rates[first] / train_rates[box_head]:.2f}x, "
              f"inference {infer_rates[first] / infer_rates[box_head]:.2f}x")
    if args.profile:
        step = steps[args.box_head[-1]]
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(2):
                step()
            synchronize(device)
        sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        print(prof.key_averages().table(sort_by=sort, row_limit=15))


if __name__ == "__main__":
    main()
