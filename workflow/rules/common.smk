# Config validation, the dataset's image list, input functions and the final targets.
import functools
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.logging import logger

sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cellseg.workflow.codehash import code_digest
from cellseg.workflow.configuration import (
    architecture_keys,
    keys_of_the_test_set,
    weights_download_path,
    resolve_config,
    trained_folds,
)
from cellseg.data.dataset import (
    DatasetIndex,
    check_headers,
    check_test_headers,
    index_test_set,
    index_training_set,
    training_files,
    training_image_path,
)
from cellseg.common.errors import ConfigError, DataError
from cellseg.workflow.header_cache import HeaderCache
from cellseg.model.init_source import InitSource, init_weights_file
from cellseg.workflow.listing import write_listing
from cellseg.common.pixel_size import mpp_warnings
from cellseg.data.image_reader import check_image, image_mpp, list_images
from cellseg.data.slide import working_size
from cellseg.inference.region_grid import region_count
from cellseg.data.shards import shard_images
from cellseg.data.split import image_groups, split_sizes

PACKAGE_DIR = Path(workflow.basedir) / "src" / "cellseg"
SCRIPTS_DIR = Path(workflow.basedir) / "workflow" / "scripts"
ENVS = "../../envs"
DEMO_DIR = "results/demo"


def _user_error(error):
    """Bad input found while building the DAG, before any job runs: its one line (naming the
    file or key) is printed first, and the returned SystemExit stops the run without
    Snakemake's header line and traceback (Snakemake catches Exceptions only)."""
    print(f"{type(error).__name__}: {error}", file=sys.stderr, flush=True)
    return SystemExit(1)


# The configuration, checked and resolved once, here: every key the recipe controls and the
# user left null gets the recipe's value, and the train section its preset's; the params and
# resources below all see the resolved values, and no job checks them again.
try:
    _resolved, TRAIN_CFG = resolve_config(config)
except ConfigError as error:
    raise _user_error(error)
config.update(_resolved)

CLASSES = list(config["classes"])
DEMO = config["data"]["source"] == "demo"
# The data keys that choose the test set: the training stages never see them.
TEST_KEYS = keys_of_the_test_set()
# The demo's own test set, which a job writes (no data.test_path).
DEMO_TEST = DEMO and not config["data"]["test_path"]


def resolve_source():
    """The training data's `source` dict (see cellseg.data.dataset), without the test keys, so that
    choosing another test set re-runs no training stage."""
    data = config["data"]
    if DEMO:
        return {"format": "reference", "path": DEMO_DIR, "classes": CLASSES}
    # The region class is a param of every rule only where it means something, so that it
    # re-runs nothing in the other layouts; the pixel size is a param of training and
    # prediction only (TRAIN_MPP).
    skip = {"source", "mpp", *TEST_KEYS}
    if data["source"] != "geojson":
        skip.add("geojson_region_class")
    source = {key: value for key, value in data.items() if key not in skip}
    return {"format": data["source"], "classes": CLASSES, **source}


def resolve_test_source():
    """The test set's `source` dict: the training data's own test set, or the one of the
    reference-layout folder `data.test_path` (another dataset); `classes` are the class files
    of its ground truth (`data.test_classes`, by default the model's)."""
    data = config["data"]
    test = {key: data[key] for key in TEST_KEYS if key != "test_classes"}
    if DEMO_TEST:
        test.update(test_path=DEMO_DIR, test_gt=f"{DEMO_DIR}/test_gt")
    return {**SOURCE, **test, "classes": data["test_classes"] or CLASSES}


SOURCE = resolve_source()
TEST_SOURCE = resolve_test_source()
# A test set labelled with other classes than the model's is scored class-agnostically only.
FOREIGN_TEST_CLASSES = TEST_SOURCE["classes"] != CLASSES

# The DAG-time header checks skip files unchanged since the last build (20,000 at 10,000 images).
HEADERS = HeaderCache(".snakemake/cellseg/tiff_headers.json")
try:
    if DEMO:
        from cellseg.data.demo import demo_ids

        TRAIN_IDS, TEST_NAMES = demo_ids(
            config["demo"]["n_train"], config["demo"]["n_test"]
        )
    else:
        TRAIN_IDS = index_training_set(SOURCE)
        check_headers(SOURCE, DatasetIndex(TRAIN_IDS, []), HEADERS.read)
    if not DEMO_TEST:
        if (
            config["data"]["test_path"]
            and not Path(config["data"]["test_path"]).is_dir()
        ):
            raise DataError(
                f"data.test_path: {config['data']['test_path']} is not a folder"
            )
        TEST_IMAGES = index_test_set(TEST_SOURCE)
        check_test_headers(TEST_SOURCE, TEST_IMAGES, HEADERS.read)
        TEST_NAMES = [t.name for t in TEST_IMAGES]
    # The pixel size the models train at: data.mpp, else the training images' metadata.
    TRAIN_MPP = config["data"]["mpp"]
    if not TRAIN_MPP and not DEMO:
        TRAIN_MPP = image_mpp(training_image_path(SOURCE, TRAIN_IDS[0]))
    if not DEMO_TEST:
        for line in mpp_warnings(
            TRAIN_MPP,
            {str(t.path): HEADERS.read(t.path).mpp for t in TEST_IMAGES},
            "data.mpp",
        ):
            logger.warning(f"Warning: {line}")
except (DataError, ConfigError) as error:
    raise _user_error(error)
HEADERS.save()

# The file `snakemake download_weights` writes, for hosts without internet.
WEIGHTS_DOWNLOAD = weights_download_path(TRAIN_CFG)
FOLDS = trained_folds(config["split"])
try:
    # train.init_from: each trained fold's source exists and has this architecture.
    for _fold in FOLDS if TRAIN_CFG["init_from"] else []:
        InitSource.read(
            init_weights_file(TRAIN_CFG["init_from"], _fold)
        ).check_architecture(TRAIN_CFG)
except ConfigError as error:
    raise _user_error(error)
if len(TRAIN_IDS) < 2:
    raise _user_error(
        DataError(f"{SOURCE.get('path')}: need at least 2 training images")
    )
try:
    split_sizes(
        len(set(image_groups(TRAIN_IDS, config["split"]["group_by"]))),
        config["split"]["val_fraction"],
        config["split"]["folds"],
        "groups" if config["split"]["group_by"] else "images",
    )
except ConfigError as error:
    raise _user_error(error)


# The per-image preprocessing stages (maps, tiles) run one job per shard of images.
SHARDS = shard_images(TRAIN_IDS, config["preprocess"]["shards"])


wildcard_constraints:
    image="[^/]+",
    shard=r"\d+",
    fold=r"\d+",
    subset="val|test",


def script_digest(script):
    """Digest of the cellseg modules `script` imports, so a library change re-runs its rule."""
    return code_digest(SCRIPTS_DIR / script, PACKAGE_DIR)


def job_resources(kind):
    """Resources of a job kind from config: read by local runs and the SLURM executor alike."""
    return dict(config["resources"].get(kind, config["resources"]["default"]))


def train_weights_file(wildcards=None):
    """`train.weights_path` as an input of training (other weights retrain); `download_weights`
    writes it when it is that rule's output. Not with train.init_from, which takes precedence.
    """
    if TRAIN_CFG["init_from"]:
        return []
    return [TRAIN_CFG["weights_path"]] if TRAIN_CFG["weights_path"] else []


def init_from_file(wildcards):
    """The weights of `train.init_from` this fold starts from, an input of its training: new
    weights there retrain the fold and what follows."""
    if not TRAIN_CFG["init_from"]:
        return []
    return [str(init_weights_file(TRAIN_CFG["init_from"], int(wildcards.fold)))]


def shard_ids(wildcards):
    """The training image ids of shard `wildcards.shard`."""
    if wildcards.shard not in SHARDS:
        raise WorkflowError(
            f"no shard {wildcards.shard}: the training images fill shards {', '.join(SHARDS)}"
        )
    return SHARDS[wildcards.shard]


def shard_sample_files(wildcards):
    """Files the training images of one shard are read from."""
    return sorted(
        {path for image in shard_ids(wildcards) for path in image_files(image)}
    )


@functools.cache
def image_files(image):
    """Files one training image is read from (a tuple: cached, shared by its shard and the
    whole-set rules)."""
    return tuple(_image_files(image))


def _image_files(image):
    return [DEMO_DIR] if DEMO else training_files(SOURCE, image)


# What the rules that see the whole training set take instead of its files, in the layouts of
# files per image (cellseg.workflow.listing): one input rather than two or more per image for each job.
TRAIN_LISTING = "results/dataset/training_files.tsv"


def all_sample_files(wildcards=None):
    """What every training image is read from (for rules that see the whole training set)."""
    return _all_sample_files()


@functools.cache
def _all_sample_files():
    if DEMO:
        return [DEMO_DIR]
    files = sorted({path for image in TRAIN_IDS for path in image_files(image)})
    if SOURCE["format"] == "coco":
        return files
    write_listing(TRAIN_LISTING, files)
    return [TRAIN_LISTING]


def test_files(wildcards=None):
    """Test images and their id map."""
    if DEMO_TEST:
        return [DEMO_DIR]
    if TEST_SOURCE["test_path"] or TEST_SOURCE["format"] == "reference":
        root = Path(TEST_SOURCE["test_path"] or TEST_SOURCE["path"])
        return [str(t.path) for t in TEST_IMAGES] + [
            str(root / "test_image_name_to_ids.json")
        ]
    if TEST_SOURCE["test_json"]:
        return [
            TEST_SOURCE["test_json"],
            TEST_SOURCE["test_image_dir"] or TEST_SOURCE["image_dir"],
        ]
    return []


def has_test_ground_truth():
    return has_test_set() and bool(TEST_SOURCE["test_gt"])


def test_ground_truth_files(wildcards=None):
    """The held-out test labels (`data.test_gt/<test name>/<class>.tif`)."""
    if DEMO_TEST:
        return [DEMO_DIR]
    return sorted(str(path) for path in Path(TEST_SOURCE["test_gt"]).glob("*/*.tif"))


def _check_test_ground_truth():
    """Fail while building the DAG when `data.test_gt` holds no test image's folder (a wrong
    path); a test image without its folder is scored as an image without cells, and said so.
    """
    if DEMO_TEST or not TEST_SOURCE["test_gt"]:
        return
    folder = Path(TEST_SOURCE["test_gt"])
    if not folder.is_dir():
        raise _user_error(DataError(f"data.test_gt: {folder} is not a folder"))
    missing = [name for name in TEST_NAMES if not (folder / name).is_dir()]
    if len(missing) == len(TEST_NAMES):
        raise _user_error(
            DataError(
                f"data.test_gt: {folder} has a folder for none of the test images, e.g. {missing[:3]}"
            )
        )
    if missing:
        logger.warning(
            f"data.test_gt: {len(missing)} test images have no folder in {folder} and are scored "
            f"as images without cells: {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}"
        )


_check_test_ground_truth()


# Stain normalisation (stain.smk): the fitted target is an input of every rule that
# reads image pixels for the model, so a change of stain.method re-runs those and what follows.

STAIN = config["stain"]


def _check_stain_reference():
    """Fail while building the DAG when `stain.reference` is not a readable image."""
    path = STAIN["reference"]
    if STAIN["method"] == "none" or not path:
        return
    if not Path(path).is_file():
        raise _user_error(ConfigError(f"stain.reference: {path} not found"))
    try:
        check_image(path)
    except DataError as error:
        raise _user_error(error)


_check_stain_reference()


def stain_reference(wildcards=None):
    """The fitted stain target (`results/stain/reference.json`); nothing with stain.method: none."""
    return [] if STAIN["method"] == "none" else "results/stain/reference.json"


def stain_reference_inputs(wildcards=None):
    """What the stain target is fitted from: `stain.reference`, or else the training images."""
    return [STAIN["reference"]] if STAIN["reference"] else all_sample_files()


def subset_files(wildcards):
    return test_files() if wildcards.subset == "test" else all_sample_files()


def subset_source(wildcards):
    """The `source` dict a predict job reads its images through."""
    return TEST_SOURCE if wildcards.subset == "test" else SOURCE


# What the one inference path (cellseg.inference.fold_ensemble) runs with: the predict_fold rule's keyword
# arguments of predict_image and the ensemble_folds rule's of fuse_instance_sets, given to
# segment_region as well, so that segment and the workflow cannot drift apart.
# The backend is how the model is loaded (a param of its own), not how it predicts.
PREDICT_SETTINGS = {
    **{key: value for key, value in config["predict"].items() if key != "backend"},
    "amp": config["predict"]["amp"] or TRAIN_CFG["amp"],
}
# Calibration is a stage of its own (calibrate_folds), before the fusion.
FUSION_SETTINGS = {
    key: value for key, value in config["ensemble"].items() if key != "calibrate"
}


def fold_model(wildcards=None, fold=None):
    """What a fold's network is loaded from for predict.backend: its weights, or with
    onnxruntime-int8 its quantised model (quantise_fold)."""
    fold = wildcards.fold if fold is None else fold
    if config["predict"]["backend"] == "onnxruntime-int8":
        return f"results/export/fold{fold}.int8.onnx"
    return f"results/train/fold{fold}/model_best.pt"


def calibration_file(wildcards=None):
    """The folds' fitted score maps (`calibrate_folds`); none with ensemble.calibrate: none."""
    return (
        []
        if config["ensemble"]["calibrate"] == "none"
        else ["results/ensemble/calibration.json"]
    )


def tune_settings(point):
    """The search and metric of an operating point (tune.smk), from config."""
    section = config["tune"]["cells"] if point == "cells" else config["tune"]
    search = {
        key: value for key, value in section.items() if key.endswith("_thresholds")
    }
    return {"metric": section["metric"], "search": search}


def shard_tiles():
    """The tiles files and index tables of every shard (what training reads)."""
    return expand("results/tiles/shard_{shard}.{ext}", shard=SHARDS, ext=["npz", "tsv"])


def has_test_set():
    return bool(TEST_NAMES)


def get_final_output():
    targets = [
        "results/evaluate/scores.tsv",
        "results/report/per_class_ap.png",
    ]
    if has_test_set():
        targets += ["results/submission/submission.zip"]
        if has_test_ground_truth():
            targets += list(test_score_files().values())
        if config["submission"]["kaggle_csv"]:
            targets += ["results/submission/submission.csv"]
    return targets


def test_score_files():
    """The test set's score tables: class-agnostic always, per class when its ground truth
    names the model's classes (per-class scores against other classes would be meaningless).
    """
    files = {"agnostic": "results/evaluate/test_scores_agnostic.tsv"}
    if not FOREIGN_TEST_CLASSES:
        files["scores"] = "results/evaluate/test_scores.tsv"
    return files


# Images to segment with the finished ensemble (rules in segment.smk).

SEGMENT_FOLDER = config["segment_images"] or config["segment"]["images"]


def _segment_images():
    """{name: path} of the images to segment, and {name: number of regions}
    (`cellseg.inference.region_grid`), every header read while the DAG is built."""
    if not SEGMENT_FOLDER:
        return {}, {}
    segment = config["segment"]
    try:
        images = list_images(SEGMENT_FOLDER)
        regions = {
            name: region_count(
                working_size(path, TRAIN_MPP, segment["mpp"]),
                segment["block_size"],
                segment["region_blocks"],
            )
            for name, path in images.items()
        }
        mpps = {
            str(path): image_mpp(path) or segment["mpp"] for path in images.values()
        }
    except DataError as error:
        raise _user_error(error)
    for line in mpp_warnings(TRAIN_MPP, mpps, "data.mpp"):
        logger.warning(f"Warning: {line}")
    return {name: str(path) for name, path in images.items()}, regions


SEGMENT_IMAGES, SEGMENT_REGIONS = _segment_images()


def segment_image_file(wildcards):
    if wildcards.name not in SEGMENT_IMAGES:
        raise WorkflowError(
            f"DataError: no image named {wildcards.name} in segment.images ({SEGMENT_FOLDER or 'not set'})"
        )
    return SEGMENT_IMAGES[wildcards.name]


def region_files(wildcards):
    """The region files of image `wildcards.name`, region 0 first."""
    segment_image_file(wildcards)
    return expand(
        "results/segment/{name}/regions/{region}.npz",
        name=wildcards.name,
        region=range(SEGMENT_REGIONS[wildcards.name]),
    )


def segment_benchmarks(wildcards=None):
    """{name: the benchmark files of its region jobs and its gather job}, for the summary's
    job costs."""
    return {
        name: [
            *(f"results/benchmarks/segment/{name}/region{r}.tsv" for r in range(n)),
            f"results/benchmarks/segment/{name}.tsv",
        ]
        for name, n in SEGMENT_REGIONS.items()
    }


def segment_outputs(wildcards=None):
    if not SEGMENT_IMAGES:
        raise WorkflowError(
            "ConfigError: segment.images: no folder set; run `snakemake segment --config segment_images=DIR`"
        )
    return expand(
        "results/segment/{name}/{file}",
        name=SEGMENT_IMAGES,
        file=["labels.tif", "cells.csv", "tissue.json"],
    )
