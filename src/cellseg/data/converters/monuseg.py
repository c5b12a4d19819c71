"""MoNuSeg and MoNuSAC 2020: images with ImageScope XML outlines, converted per split folder.

Each split is its own download (MoNuSeg: `MoNuSeg 2018 Training Data/` with `Tissue Images/`
and `Annotations/`, and `MoNuSegTestData/`; MoNuSAC: `MoNuSAC_images_and_annotations/` and
`MoNuSAC Testing Data and Annotations/`, one folder per patient). Every `.xml` under a split
folder is paired with the image of the same stem anywhere under it, preferring `.tif`, then
`.tiff`, `.png` and `.svs`, and one in the XML's own folder. The image id is the XML's stem.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

from cellseg.common.errors import DataError
from cellseg.data.converters.aperio import Region, rasterise, read_regions
from cellseg.data.converters.layout import Conversion, Item, safe_name
from cellseg.data.converters.native import read_rgb

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".svs")
# MoNuSAC's cell types (the Annotations' Attribute Names), as class1..class4.
MONUSAC_TYPES = ("Epithelial", "Lymphocyte", "Neutrophil", "Macrophage")
# Outlines of nuclei too faint or too uncertain to type, and of other cells: not labelled.
MONUSAC_SKIPPED = "Ambiguous"

ClassOf = Callable[[Region, Path], str | None]


def convert_monuseg(train_dir: str | os.PathLike, test_dir: str | os.PathLike | None = None) -> Conversion:
    """MoNuSeg: every outline is a nucleus, of the one class `class1`."""
    return _convert(train_dir, test_dir, {"class1": "nucleus"}, lambda region, xml: "class1")


def convert_monusac(train_dir: str | os.PathLike, test_dir: str | os.PathLike | None = None) -> Conversion:
    """MoNuSAC 2020: Epithelial, Lymphocyte, Neutrophil and Macrophage as class1..class4 (the
    Attribute Name matched without regard to case); Ambiguous outlines are left out."""
    meaning = {f"class{k}": name for k, name in enumerate(MONUSAC_TYPES, 1)}
    by_name = {name.lower(): cls for cls, name in meaning.items()}

    def class_of(region: Region, xml: Path) -> str | None:
        if region.label.lower() == MONUSAC_SKIPPED.lower():
            return None
        if region.label.lower() not in by_name:
            raise DataError(
                f"{xml}: annotation class {region.label!r} is none of {', '.join(MONUSAC_TYPES)} "
                f"or {MONUSAC_SKIPPED}"
            )
        return by_name[region.label.lower()]

    return _convert(train_dir, test_dir, meaning, class_of)


def _convert(train_dir, test_dir, meaning: dict[str, str], class_of: ClassOf) -> Conversion:
    train = _pairs(Path(train_dir))
    test = _pairs(Path(test_dir)) if test_dir is not None else []
    classes = list(meaning)
    return Conversion(classes, meaning, _items(train, classes, class_of), _items(test, classes, class_of))


def _pairs(folder: Path) -> list[tuple[Path, Path]]:
    """`(xml, image)` for every XML under `folder`, sorted; `DataError` for a missing folder,
    no XML, or an XML without its image."""
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found")
    xmls = sorted(folder.rglob("*.xml"))
    if not xmls:
        raise DataError(f"{folder}: no .xml annotation file found")
    images: dict[str, list[Path]] = {}
    for path in folder.rglob("*"):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            images.setdefault(path.stem, []).append(path)
    pairs = []
    for xml in xmls:
        candidates = images.get(xml.stem)
        if not candidates:
            raise DataError(f"{xml}: no image {xml.stem}{{{','.join(IMAGE_SUFFIXES)}}} beside it under {folder}")
        best = min(candidates, key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p.parent != xml.parent, str(p)))
        pairs.append((xml, best))
    return pairs


def _items(pairs: list[tuple[Path, Path]], classes: list[str], class_of: ClassOf) -> Iterator[Item]:
    for xml, image_path in pairs:
        image = read_rgb(image_path)
        outlines: dict[str, list] = {name: [] for name in classes}
        for region in read_regions(xml):
            name = class_of(region, xml)
            if name is not None:
                outlines[name].append(region.vertices)
        masks = {name: rasterise(polygons, image.shape[:2]) for name, polygons in outlines.items() if polygons}
        yield Item(safe_name(xml.stem), image, masks, xml)
