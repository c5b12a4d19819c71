"""`python -m cellseg.data.converters <name> SRC DEST [options]`: convert a public dataset, as
published, into the reference layout at DEST, then print what was written and the config lines
that train on it; `python -m cellseg.data.converters geojson SRC DEST` rewrites a reference-layout
folder as images + QuPath GeoJSON. Bad input ends with one `ERROR:` line naming the file, and
no DEST."""

from __future__ import annotations

import argparse
from pathlib import Path

from cellseg.common.errors import DataError
from cellseg.data.converters import (
    convert_consep,
    convert_lizard,
    convert_monusac,
    convert_monuseg,
    convert_pannuke,
    write_reference,
)
from cellseg.data.converters.geojson import GeojsonSummary, reference_to_geojson
from cellseg.data.converters.layout import Conversion, Summary


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number of pixels")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cellseg.data.converters", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="dataset", required=True, metavar="DATASET")

    def command(name: str, title: str, src: str):
        sub = commands.add_parser(name, help=title, description=title)
        sub.add_argument("src", metavar="SRC", help=src)
        sub.add_argument("dest", metavar="DEST", help="the folder to write (must not exist, or be empty)")
        sub.add_argument(
            "--patch", type=_positive, metavar="P",
            help="cut every image into P x P tiles named <image>_<k> (k = 000, 001, ...)",
        )
        return sub

    for name, convert, title in (("monuseg", convert_monuseg, "MoNuSeg"), ("monusac", convert_monusac, "MoNuSAC 2020")):
        sub = command(name, f"{title}: images + ImageScope XML", "the training download's folder")
        sub.add_argument("--test", metavar="DIR", help="the test download's folder (no test set without it)")
        sub.set_defaults(convert=lambda a, convert=convert: convert(a.src, a.test))
    sub = command("consep", "CoNSeP: Images/*.png + Labels/*.mat", "the folder holding Train/ and Test/")
    sub.add_argument("--no-merge", action="store_true", help="keep the 7 native classes instead of merging into 4")
    sub.set_defaults(convert=lambda a: convert_consep(a.src, merge=not a.no_merge))
    for name, convert, title, src in (
        ("lizard", convert_lizard, "Lizard: images/*.png + Labels/*.mat + info.csv", "the folder holding the downloads"),
        ("pannuke", convert_pannuke, "PanNuke: folds of .npy arrays", "the folder holding Fold 1, Fold 2, Fold 3"),
    ):
        sub = command(name, title, src)
        sub.add_argument(
            "--test-fold", type=int, default=3, metavar="K",
            help="the fold (split) that becomes the test set (default 3); 0: none, every image trains",
        )
        sub.set_defaults(convert=lambda a, convert=convert: convert(a.src, a.test_fold))
    title = "a reference-layout folder (train/<id>/image.tif + <class>.tif) as images + QuPath GeoJSON"
    sub = commands.add_parser("geojson", help=title, description=title)
    sub.add_argument("src", metavar="SRC", help="a folder in the reference layout, e.g. a converted dataset")
    sub.add_argument("dest", metavar="DEST", help="the folder to write (must not exist, or be empty)")
    return parser


def describe(conversion: Conversion, summary: Summary, dest: str) -> str:
    """What was written, per class, and the config lines that train on `dest`."""
    counts = summary.instances
    lines = [f"Wrote {summary.images['train']} training and {summary.images['test']} test images to {dest}"]
    for name in conversion.classes:
        lines.append(
            f"  {name} ({conversion.meaning[name]}): {counts['train'].get(name, 0)} training, "
            f"{counts['test'].get(name, 0)} test instances"
        )
    test_gt = f", test_gt: {dest}/test_gt" if summary.images["test"] else ""
    lines += [
        "To train on it, put in an override file:",
        f"  data: {{source: reference, path: {dest}{test_gt}}}",
        f"  classes: [{', '.join(conversion.classes)}]",
    ]
    return "\n".join(lines)


def describe_geojson(summary: GeojsonSummary, src: str, dest: str) -> str:
    """What `geojson` wrote, per class, and the config lines that train on `dest`."""
    lines = [f"Wrote {summary.images} images and their GeoJSON to {dest}"]
    lines += [f"  {name}: {summary.instances.get(name, 0)} instances" for name in summary.classes]
    test = f", test_path: {src}" if (Path(src) / "test_release").is_dir() else ""
    test += f", test_gt: {Path(src) / 'test_gt'}" if test and (Path(src) / "test_gt").is_dir() else ""
    lines += [
        "To train on it, put in an override file:",
        f"  data: {{source: geojson, path: {dest}{test}}}",
        f"  classes: [{', '.join(summary.classes)}]",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        if args.dataset == "geojson":
            print(describe_geojson(reference_to_geojson(args.src, args.dest), args.src, args.dest))
            return
        conversion = args.convert(args)
        summary = write_reference(conversion, args.dest, args.patch)
    except DataError as error:
        raise SystemExit(f"ERROR: {error}") from None
    print(describe(conversion, summary, args.dest))


if __name__ == "__main__":
    main()
