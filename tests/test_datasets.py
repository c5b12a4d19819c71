"""The public-dataset converters, each on small files in its native format written here, read
back through `cellseg.data.dataset` as the pipeline reads them; and their messages for bad input."""

import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import scipy.io
import tifffile
from PIL import Image

from cellseg.common.errors import DataError
from cellseg.data.converters import (
    convert_consep,
    convert_lizard,
    convert_monusac,
    convert_monuseg,
    convert_pannuke,
    write_reference,
)
from cellseg.data.converters.__main__ import main
from cellseg.data.converters.aperio import rasterise
from cellseg.data.converters.layout import safe_name
from cellseg.data.dataset import (
    check_headers,
    index_dataset,
    index_test_set,
    index_training_set,
    load_ground_truth,
    load_sample,
    load_test_image,
)

RNG = np.random.default_rng(0)


def _rgb(height, width):
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png(path, rgb, alpha=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]) if alpha else rgb
    Image.fromarray(pixels).save(path)


def _tif(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, rgb, photometric="rgb")


def _box(x0, y0, x1, y1):
    """An outline whose pixel centres inside are columns x0..x1 and rows y0..y1: edges 0.3 px
    beyond the outer centres, so a pixel-area convention (pixel c covering [c, c + 1)) would
    fill one more column and row."""
    return [(x0 - 0.3, y0 - 0.3), (x1 + 0.3, y0 - 0.3), (x1 + 0.3, y1 + 0.3), (x0 - 0.3, y1 + 0.3)]


def _imagescope(path, annotations):
    """Write an Aperio ImageScope XML file: `annotations` is [(attribute name, [outline])]."""
    root = ET.Element("Annotations", MicronsPerPixel="0.252000")
    for number, (name, outlines) in enumerate(annotations, 1):
        annotation = ET.SubElement(root, "Annotation", Id=str(number), Type="4", LineColor="65280")
        attributes = ET.SubElement(annotation, "Attributes")
        ET.SubElement(attributes, "Attribute", Name=name, Id="0", Value="")
        regions = ET.SubElement(annotation, "Regions")
        ET.SubElement(regions, "RegionAttributeHeaders")
        for region_id, outline in enumerate(outlines, 1):
            region = ET.SubElement(regions, "Region", Id=str(region_id), Type="0", Zoom="1")
            ET.SubElement(region, "Attributes")
            vertices = ET.SubElement(region, "Vertices")
            for x, y in outline:
                ET.SubElement(vertices, "Vertex", X=f"{x:.6f}", Y=f"{y:.6f}", Z="0")
        ET.SubElement(annotation, "Plots")
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def _filled(shape, *boxes):
    """The expected instance plane: box i (x0, y0, x1, y1, inclusive) is instance i + 1."""
    plane = np.zeros(shape, np.int32)
    for number, (x0, y0, x1, y1) in enumerate(boxes, 1):
        plane[y0 : y1 + 1, x0 : x1 + 1] = number
    return plane


def _source(dest, classes):
    return {"format": "reference", "path": str(dest), "classes": classes, "test_gt": str(dest / "test_gt")}


def _no_partial_output(dest):
    return not dest.exists() and not list(dest.parent.glob(f".{dest.name}.partial-*"))


# ---------------------------------------------------------------- MoNuSeg and MoNuSAC


def test_monuseg_training_and_test_folders_read_back_through_the_pipeline_reader(tmp_path, capsys):
    train, test, dest = tmp_path / "MoNuSeg 2018 Training Data", tmp_path / "MoNuSegTestData", tmp_path / "out"
    images = {"TCGA-A": _rgb(24, 32), "TCGA-B": _rgb(20, 20), "TCGA-C": _rgb(16, 24)}
    _tif(train / "Tissue Images" / "TCGA-A.tif", images["TCGA-A"])
    _imagescope(train / "Annotations" / "TCGA-A.xml", [("Description", [_box(2, 3, 6, 5), _box(10, 10, 14, 18)])])
    _tif(train / "Tissue Images" / "TCGA-B.tif", images["TCGA-B"])
    # The second outline overlaps the first: the later one wins there, as in the organisers' reader.
    _imagescope(train / "Annotations" / "TCGA-B.xml", [("", [_box(1, 1, 8, 8), _box(5, 5, 12, 12)])])
    _tif(test / "TCGA-C.tif", images["TCGA-C"])
    _imagescope(test / "TCGA-C.xml", [("Description", [_box(0, 0, 3, 3), _box(20, 12, 30, 20)])])

    main(["monuseg", str(train), str(dest), "--test", str(test)])

    printed = capsys.readouterr().out
    assert "Wrote 2 training and 1 test images" in printed
    assert f"data: {{source: reference, path: {dest}, test_gt: {dest}/test_gt}}" in printed
    source = _source(dest, ["class1"])
    check_headers(source, index_dataset(source))
    assert index_training_set(source) == ["TCGA-A", "TCGA-B"]
    a = load_sample(source, "TCGA-A")
    assert np.array_equal(a.image, images["TCGA-A"])
    assert np.array_equal(a.labels[0], _filled((24, 32), (2, 3, 6, 5), (10, 10, 14, 18)))
    b = load_sample(source, "TCGA-B").labels[0]
    expected = _filled((20, 20), (1, 1, 8, 8), (5, 5, 12, 12))
    assert np.array_equal(b, expected) and (b == 1).sum() == 64 - 16
    [c] = index_test_set(source)
    assert (c.file_name, c.id, c.height, c.width) == ("TCGA-C.tif", 1, 16, 24)
    assert np.array_equal(load_test_image(c), images["TCGA-C"])
    # The second outline runs past the image's edge: clipped to it.
    truth = load_ground_truth(dest / "test_gt", "TCGA-C", ["class1"], (16, 24))
    assert np.array_equal(truth[0], _filled((16, 24), (0, 0, 3, 3), (20, 12, 23, 15)))
    assert json.loads((dest / "classes.json").read_text()) == {"class1": "nucleus"}


def test_monusac_types_go_to_their_classes_and_ambiguous_outlines_are_left_out(tmp_path):
    train, dest = tmp_path / "MoNuSAC_images_and_annotations", tmp_path / "out"
    rgb = _rgb(30, 40)
    patient = train / "TCGA-55-1594-01Z-00-DX1"
    _tif(patient / "TCGA-55-1594-01Z-00-DX1_001.tif", rgb)
    # A .png of the same stem beside it: the .tif is preferred.
    _png(patient / "TCGA-55-1594-01Z-00-DX1_001.png", np.zeros_like(rgb))
    _imagescope(patient / "TCGA-55-1594-01Z-00-DX1_001.xml", [
        ("Epithelial", [_box(1, 1, 5, 5), _box(20, 2, 26, 9)]),
        ("Ambiguous", [_box(10, 20, 16, 26)]),
        ("lymphocyte", [_box(30, 20, 35, 25)]),
    ])
    other = train / "TCGA-5P-A9K0-01Z-00-DX1"
    _png(other / "TCGA-5P-A9K0-01Z-00-DX1_1.png", rgb[:20, :20], alpha=True)
    _imagescope(other / "TCGA-5P-A9K0-01Z-00-DX1_1.xml", [("Macrophage", [_box(3, 3, 9, 9)])])
    # An image only as .svs: an Aperio-style TIFF, full resolution first, then a thumbnail.
    with tifffile.TiffWriter(other / "TCGA-5P-A9K0-01Z-00-DX1_2.svs") as svs:
        aperio = "Aperio Image Library v12.0.15 \n40x30 [0,0 40x30] (16x16) |AppMag = 40|MPP = 0.2520"
        svs.write(rgb, photometric="rgb", tile=(16, 16), description=aperio)
        svs.write(rgb[::4, ::4], photometric="rgb", description="Aperio Image Library v12.0.15 \n40x30 -> 10x8")
    _imagescope(other / "TCGA-5P-A9K0-01Z-00-DX1_2.xml", [("Neutrophil", [_box(0, 0, 4, 4)])])

    summary = write_reference(convert_monusac(train), dest)

    classes = ["class1", "class2", "class3", "class4"]
    source = _source(dest, classes)
    assert index_training_set(source) == [
        "TCGA-55-1594-01Z-00-DX1_001", "TCGA-5P-A9K0-01Z-00-DX1_1", "TCGA-5P-A9K0-01Z-00-DX1_2"]
    first = load_sample(source, "TCGA-55-1594-01Z-00-DX1_001")
    assert np.array_equal(first.image, rgb)
    assert np.array_equal(first.labels[0], _filled((30, 40), (1, 1, 5, 5), (20, 2, 26, 9)))
    assert np.array_equal(first.labels[1], _filled((30, 40), (30, 20, 35, 25)))
    assert not first.labels[2:].any() and not first.labels[:, 20:27, 10:17].any()
    assert sorted(p.name for p in (dest / "train" / "TCGA-55-1594-01Z-00-DX1_001").iterdir()) == [
        "class1.tif", "class2.tif", "image.tif"]
    second = load_sample(source, "TCGA-5P-A9K0-01Z-00-DX1_1")
    assert np.array_equal(second.image, rgb[:20, :20])  # alpha dropped
    assert np.array_equal(second.labels[3], _filled((20, 20), (3, 3, 9, 9)))
    third = load_sample(source, "TCGA-5P-A9K0-01Z-00-DX1_2")
    assert np.array_equal(third.image, rgb) and np.array_equal(third.labels[2], _filled((30, 40), (0, 0, 4, 4)))
    assert summary.instances["train"] == {"class1": 2, "class2": 1, "class3": 1, "class4": 1}
    assert index_test_set(source) == []  # no --test: an empty test listing
    assert json.loads((dest / "classes.json").read_text())["class4"] == "Macrophage"


def test_monusac_unknown_type_names_the_file_and_leaves_no_destination(tmp_path):
    _tif(tmp_path / "src" / "p" / "x_1.tif", _rgb(10, 10))
    _imagescope(tmp_path / "src" / "p" / "x_1.xml", [("Fibroblast", [_box(1, 1, 3, 3)])])
    with pytest.raises(DataError, match=r"x_1\.xml: annotation class 'Fibroblast' is none of Epithelial"):
        write_reference(convert_monusac(tmp_path / "src"), tmp_path / "out")
    assert _no_partial_output(tmp_path / "out")


def test_aperio_files_that_cannot_be_converted_name_the_file(tmp_path):
    src = tmp_path / "src"
    _imagescope(src / "a.xml", [("", [_box(1, 1, 3, 3)])])
    with pytest.raises(DataError, match=r"a\.xml: no image a\{\.tif"):
        convert_monuseg(src)
    _tif(src / "a.tif", _rgb(8, 8))
    (src / "b.xml").write_text("<Annotations><Annotation>")
    _tif(src / "b.tif", _rgb(8, 8))
    with pytest.raises(DataError, match=r"b\.xml: cannot read as XML"):
        write_reference(convert_monuseg(src), tmp_path / "out")
    assert _no_partial_output(tmp_path / "out")
    # Two images of one name (in two subfolders) would share a folder.
    (src / "b.xml").unlink()
    _imagescope(src / "again" / "a.xml", [("", [_box(1, 1, 3, 3)])])
    with pytest.raises(DataError, match=r"again/a\.xml: image name 'a' is taken already by .*src/a\.xml"):
        write_reference(convert_monuseg(src), tmp_path / "out")
    with pytest.raises(DataError, match="missing: folder not found"):
        convert_monuseg(tmp_path / "missing")


def test_rasterise_fills_pixel_centres_inside_the_outline():
    # A triangle under the line x + y = 6.3: the pixel at row r, column c is in when c + r <= 6.
    plane = rasterise([np.array([[-0.5, -0.5], [6.8, -0.5], [-0.5, 6.8]])], (8, 8))
    rows, cols = np.mgrid[:8, :8]
    assert np.array_equal(plane, (rows + cols <= 6).astype(np.int32))
    assert not rasterise([np.array([[1.0, 1.0], [5.0, 5.0]]), np.array([[20.0, 20], [30, 20], [30, 30]])], (8, 8)).any()


# ---------------------------------------------------------------- CoNSeP and Lizard


def _consep_split(folder, name, rgb, inst_map, inst_type=None, type_map=None):
    _png(folder / "Images" / f"{name}.png", rgb, alpha=True)  # CoNSeP's PNGs are RGBA
    label = {"inst_map": inst_map.astype(np.float64)}
    if inst_type is not None:
        label["inst_type"] = np.asarray(inst_type, np.float64).reshape(-1, 1)
        label["inst_centroid"] = np.zeros((len(inst_type), 2))
    if type_map is not None:
        label["type_map"] = type_map.astype(np.float64)
    (folder / "Labels").mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(folder / "Labels" / f"{name}.mat", label)


@pytest.fixture
def consep(tmp_path):
    """CoNSeP in miniature: train_1 (32 x 40, 4 nuclei of native types 1, 4, 6, 3) and test_1
    (a type map only, no inst_type: 2 nuclei of types 2 and 7)."""
    src = tmp_path / "CoNSeP"
    inst = _filled((32, 40), (1, 1, 4, 4), (10, 2, 14, 6), (20, 20, 30, 28), (33, 5, 38, 9))
    _consep_split(src / "Train", "train_1", _rgb(32, 40), inst, inst_type=[1, 4, 6, 3], type_map=np.minimum(inst, 1))
    test_inst = _filled((16, 16), (0, 0, 5, 5), (8, 8, 12, 12))
    types = np.select([test_inst == 1, test_inst == 2], [2, 7], 0)
    types[0, 0] = 5  # a minority pixel of another class
    _consep_split(src / "Test", "test_1", _rgb(16, 16), test_inst, type_map=types)
    return src, inst


def test_consep_merges_its_seven_types_into_four_classes(tmp_path, consep):
    src, inst = consep
    dest = tmp_path / "out"
    write_reference(convert_consep(src), dest)

    source = _source(dest, ["class1", "class2", "class3", "class4"])
    check_headers(source, index_dataset(source))
    sample = load_sample(source, "train_1")
    # native 1 -> class1 (other); 4 and 3 -> class3 (epithelial); 6 -> class4 (spindle-shaped)
    assert np.array_equal(sample.labels[0], np.where(inst == 1, 1, 0))
    assert not sample.labels[1].any()
    assert np.array_equal(sample.labels[2], np.select([inst == 2, inst == 4], [1, 2], 0))
    assert np.array_equal(sample.labels[3], np.where(inst == 3, 1, 0))
    [test] = index_test_set(source)
    assert test.file_name == "test_1.tif"
    truth = load_ground_truth(dest / "test_gt", "test_1", source["classes"], (16, 16))
    # Classes from the type map's majority per nucleus: 2 -> class2, 7 -> class4.
    assert truth[1].max() == 1 and truth[3].max() == 1 and (truth[1] > 0).sum() == 36


def test_consep_unmerged_keeps_seven_classes_and_patches_are_named_for_group_by(tmp_path, consep):
    src, inst = consep
    dest = tmp_path / "out"
    main(["consep", str(src), str(dest), "--no-merge", "--patch", "16"])

    classes = [f"class{k}" for k in range(1, 8)]
    source = _source(dest, classes)
    ids = index_training_set(source)
    # 32 x 40 in 16 px tiles: rows at 0, 16; columns at 0, 16 and 24 (flush with the edge)
    assert ids == [f"train_1_{k:03d}" for k in range(6)]
    tile = load_sample(source, "train_1_005")  # rows 16-31, columns 24-39
    assert np.array_equal(tile.labels[5] > 0, inst[16:32, 24:40] == 3)  # native 6 (muscle)
    assert np.array_equal(tile.labels[2] > 0, inst[16:32, 24:40] == 4)  # native 3
    assert [t.name for t in index_test_set(source)] == ["test_1_000"]  # 16 x 16: one tile


def test_consep_label_file_problems_name_the_file(tmp_path, consep):
    src, _ = consep
    label = src / "Train" / "Labels" / "train_1.mat"
    scipy.io.savemat(label, {"inst_map": np.ones((32, 40)), "inst_type": np.array([[9]])})
    with pytest.raises(DataError, match=r"train_1\.mat: class 9 outside CoNSeP's 1\.\.7"):
        write_reference(convert_consep(src), tmp_path / "out")
    scipy.io.savemat(label, {"inst_map": np.ones((32, 40))})
    with pytest.raises(DataError, match="has neither inst_type nor type_map"):
        write_reference(convert_consep(src), tmp_path / "out")
    scipy.io.savemat(label, {"type_map": np.ones((32, 40))})
    with pytest.raises(DataError, match=r"train_1\.mat: lacks the variable\(s\) inst_map \(has type_map\)"):
        write_reference(convert_consep(src), tmp_path / "out")
    # A MATLAB v7.3 file is HDF5, which scipy cannot read: its 128-byte header says version 0x0200.
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    label.write_bytes(header.ljust(124) + b"\x00\x02IM" + bytes(384))
    with pytest.raises(DataError, match=r"train_1\.mat: MATLAB v7\.3 \(HDF5\) file"):
        write_reference(convert_consep(src), tmp_path / "out")
    assert _no_partial_output(tmp_path / "out")
    (src / "Train" / "Images" / "train_1.png").unlink()
    with pytest.raises(DataError, match=r"train_1\.mat: its image .*train_1\.png not found"):
        convert_consep(src)


def _lizard_label(path, inst_map, ids, classes):
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = np.asarray(ids).reshape(-1, 1)
    scipy.io.savemat(path, {
        "inst_map": inst_map.astype(np.int32), "id": ids, "class": np.asarray(classes).reshape(-1, 1),
        "bbox": np.zeros((len(ids), 4)), "centroid": np.zeros((len(ids), 2)),
    })


def test_lizard_classes_follow_the_id_list_and_info_csv_picks_the_test_split(tmp_path):
    src, dest = tmp_path / "lizard", tmp_path / "out"
    rgb = _rgb(24, 24)
    _png(src / "lizard_images1" / "Lizard_Images1" / "consep_1.png", rgb)
    _png(src / "lizard_images2" / "Lizard_Images2" / "pannuke_2.png", _rgb(12, 12))
    labels = src / "lizard_labels" / "Lizard_Labels"
    # ids 7 and 3 (not consecutive, not sorted): 7 is a Plasma cell, 3 Connective tissue
    inst = _filled((24, 24), (0, 0, 2, 2), (5, 5, 9, 9))
    inst[inst == 1], inst[inst == 2] = 7, 3
    _lizard_label(labels / "Labels" / "consep_1.mat", inst, [7, 3], [4, 6])
    _lizard_label(labels / "Labels" / "pannuke_2.mat", _filled((12, 12), (1, 1, 3, 3)), [1], [1])
    (labels / "info.csv").write_text("Filename,Source,Split\nconsep_1,consep,1\npannuke_2,pannuke,2\n")

    write_reference(convert_lizard(src, test_fold=2), dest)

    source = _source(dest, [f"class{k}" for k in range(1, 7)])
    assert index_training_set(source) == ["consep_1"]
    sample = load_sample(source, "consep_1")
    assert np.array_equal(sample.image, rgb)
    assert np.array_equal(sample.labels[3], _filled((24, 24), (0, 0, 2, 2)))  # class4 = Plasma
    assert np.array_equal(sample.labels[5], _filled((24, 24), (5, 5, 9, 9)))  # class6 = Connective tissue
    assert sample.labels[[0, 1, 2, 4]].sum() == 0
    assert [t.name for t in index_test_set(source)] == ["pannuke_2"]
    truth = load_ground_truth(dest / "test_gt", "pannuke_2", source["classes"], (12, 12))
    assert (truth[0] > 0).sum() == 9 and truth[1:].sum() == 0  # class1 = Neutrophil

    with pytest.raises(DataError, match=r"no image is in split 4 of info\.csv"):
        convert_lizard(src, test_fold=4)
    # Instance 1 of the map is missing from the id list: it has no class.
    _lizard_label(labels / "Labels" / "pannuke_2.mat", _filled((12, 12), (1, 1, 3, 3)), [2], [1])
    with pytest.raises(DataError, match=r"pannuke_2\.mat: instance 1 has class 0"):
        write_reference(convert_lizard(src, test_fold=0), tmp_path / "out2")
    (labels / "info.csv").write_text("Filename,Source,Split\nconsep_1,consep,1\n")
    with pytest.raises(DataError, match=r"pannuke_2\.mat: not listed in info\.csv"):
        convert_lizard(src)


# ---------------------------------------------------------------- PanNuke


def _pannuke_fold(src, fold, images, masks, types):
    folder = src / f"Fold {fold}"
    (folder / "images" / f"fold{fold}").mkdir(parents=True)
    (folder / "masks" / f"fold{fold}").mkdir(parents=True)
    np.save(folder / "images" / f"fold{fold}" / "images.npy", images)
    np.save(folder / "images" / f"fold{fold}" / "types.npy", np.array(types))
    np.save(folder / "masks" / f"fold{fold}" / "masks.npy", masks)


def test_pannuke_channels_are_the_five_classes_and_a_fold_is_the_test_set(tmp_path):
    src, dest = tmp_path / "pannuke", tmp_path / "out"
    images = RNG.integers(0, 256, (2, 16, 16, 3)).astype(np.float64)
    images[0, 0, 0] = [12.4, 12.6, 255.0]  # float64 0-255, rounded to uint8
    masks = np.zeros((2, 16, 16, 6))
    masks[0, 1:4, 1:4, 0] = 5        # Neoplastic, id 5
    masks[0, 6:9, 6:9, 0] = 9        # Neoplastic, id 9
    masks[0, 10:14, 2:5, 4] = 12     # Epithelial
    masks[..., 5] = (masks[..., :5].sum(-1) == 0)  # channel 5: background, not read
    _pannuke_fold(src, 1, images, masks, ["Breast", "Bile-duct"])
    fold2 = np.zeros((1, 16, 16, 6))
    fold2[0, 3:7, 3:7, 3] = 2        # Dead
    _pannuke_fold(src, 2, images[:1], fold2, ["Head&Neck"])

    write_reference(convert_pannuke(src, test_fold=2), dest)

    source = _source(dest, [f"class{k}" for k in range(1, 6)])
    check_headers(source, index_dataset(source))
    assert index_training_set(source) == ["fold1_00000_Breast", "fold1_00001_Bile-duct"]
    sample = load_sample(source, "fold1_00000_Breast")
    assert sample.image[0, 0].tolist() == [12, 13, 255]
    assert np.array_equal(sample.image[1:], images[0, 1:].astype(np.uint8))
    assert sample.labels[0].max() == 2 and (sample.labels[0] == 1).sum() == 9
    assert (sample.labels[4] > 0).sum() == 12 and sample.labels[1:4].sum() == 0
    assert not (dest / "train" / "fold1_00001_Bile-duct" / "class1.tif").exists()
    [test] = index_test_set(source)
    assert test.name == "fold2_00000_Head_Neck"
    truth = load_ground_truth(dest / "test_gt", test.name, source["classes"], (16, 16))
    assert (truth[3] > 0).sum() == 16

    with pytest.raises(DataError, match=r"no fold 3 found \(folds found: \[1, 2\]\)"):
        convert_pannuke(src)
    np.save(src / "Fold 2" / "masks" / "fold2" / "masks.npy", np.zeros((1, 16, 16, 5)))
    with pytest.raises(DataError, match=r"fold2/masks\.npy: shape \(1, 16, 16, 5\); expected \(1, 16, 16, 6\)"):
        write_reference(convert_pannuke(src, test_fold=2), tmp_path / "out2")
    assert _no_partial_output(tmp_path / "out2")


# ---------------------------------------------------------------- the layout and the command line


def test_destination_must_be_new_or_empty_and_names_are_made_safe(tmp_path, consep, capsys):
    src, _ = consep
    dest = tmp_path / "out"
    dest.mkdir()
    write_reference(convert_consep(src), dest)  # an empty folder is replaced
    assert (dest / "train" / "train_1" / "image.tif").is_file()
    with pytest.raises(SystemExit, match=r"^ERROR: .*out: exists and is not an empty folder"):
        main(["consep", str(src), str(dest)])
    assert safe_name("TCGA 01{a}/b") == "TCGA_01_a__b" and safe_name(".hidden") == "hidden"


# ---------------------------------------------------------------- reference layout -> geojson layout


def _touching_nuclei(shape, n, rng):
    """A CoNSeP-like instance map: `n` nuclei of radius 3-7 px around random centres, a pixel
    going to its nearest centre, so that neighbours touch along a shared border."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centres = rng.uniform(0, shape, (n, 2))
    radii = rng.uniform(3, 7, n)
    d2 = (yy[None] - centres[:, :1, None]) ** 2 + (xx[None] - centres[:, 1:, None]) ** 2
    nearest = d2.argmin(axis=0)
    inside = np.take_along_axis(d2, nearest[None], 0)[0] <= radii[nearest] ** 2
    return np.where(inside, nearest + 1, 0)


def test_reference_labels_written_as_geojson_read_back_as_the_same_instances(tmp_path, consep, capsys):
    src, _ = consep
    rng = np.random.default_rng(3)
    inst = _touching_nuclei((48, 56), 30, rng)
    _consep_split(src / "Train", "train_2", _rgb(48, 56), inst, inst_type=rng.integers(1, 8, 30))
    write_reference(convert_consep(src), tmp_path / "ref")
    main(["geojson", str(tmp_path / "ref"), str(tmp_path / "geo")])
    classes = ["class1", "class2", "class3", "class4"]
    printed = capsys.readouterr().out
    assert printed.startswith(f"Wrote 2 images and their GeoJSON to {tmp_path / 'geo'}")
    assert f"data: {{source: geojson, path: {tmp_path / 'geo'}, test_path: {tmp_path / 'ref'}, test_gt:" in printed
    assert sorted(p.name for p in (tmp_path / "geo").iterdir()) == [
        "train_1.geojson", "train_1.tif", "train_2.geojson", "train_2.tif"
    ]
    reference = _source(tmp_path / "ref", classes)
    geojson = {"format": "geojson", "path": str(tmp_path / "geo"), "classes": classes}
    assert index_training_set(geojson) == index_training_set(reference) == ["train_1", "train_2"]
    check_headers(geojson, index_dataset(geojson))
    for image_id in ("train_1", "train_2"):
        truth, read = load_sample(reference, image_id), load_sample(geojson, image_id)
        np.testing.assert_array_equal(read.image, truth.image)
        for c in range(len(classes)):
            assert read.labels[c].max() == truth.labels[c].max()  # counts and classes
            for number in range(1, truth.labels[c].max() + 1):
                mask = truth.labels[c] == number
                found = read.labels[c] == np.bincount(read.labels[c][mask]).argmax()
                assert (mask & found).sum() / (mask | found).sum() >= 0.95
        np.testing.assert_array_equal(read.labels, truth.labels)  # in fact pixel for pixel
    assert truth.labels.max(axis=(1, 2)).sum() >= 20  # train_2's touching nuclei
    with pytest.raises(SystemExit, match=r"^ERROR: .*geo: exists and is not an empty folder"):
        main(["geojson", str(tmp_path / "ref"), str(tmp_path / "geo")])
    with pytest.raises(SystemExit, match=r"^ERROR: .*missing/train: no image folders"):
        main(["geojson", str(tmp_path / "missing"), str(tmp_path / "geo2")])
    assert _no_partial_output(tmp_path / "geo2")


def test_an_image_without_cells_becomes_a_region_covering_it(tmp_path):
    """A patch with no cells (CoNSeP has some) is annotated and empty, not unannotated: the
    converter marks it with one whole-image region, which reads back as an image without cells."""
    for name in ("cells", "empty"):
        (tmp_path / "ref" / "train" / name).mkdir(parents=True)
        tifffile.imwrite(tmp_path / "ref" / "train" / name / "image.tif", _rgb(30, 40))
    cell = np.zeros((30, 40), np.uint16)
    cell[10:16, 12:19] = 1
    tifffile.imwrite(tmp_path / "ref" / "train" / "cells" / "class1.tif", cell)
    main(["geojson", str(tmp_path / "ref"), str(tmp_path / "geo")])
    (feature,) = json.loads((tmp_path / "geo" / "empty.geojson").read_text())["features"]
    assert feature["properties"]["classification"]["name"] == "Region"
    geojson = {"format": "geojson", "path": str(tmp_path / "geo"), "classes": ["class1"], "geojson_region_class": "Region*"}
    check_headers(geojson, index_dataset(geojson))
    sample = load_sample(geojson, "empty")
    assert sample.labels.shape == (1, 30, 40) and not sample.labels.any()
    assert sample.valid is None or sample.valid.all()
