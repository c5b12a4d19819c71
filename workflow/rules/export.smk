# Each trained fold as a self-contained ONNX model (backbone, FPN, RPN, box and mask heads)
# with a JSON card: classes, input normalisation, tile size, µm per pixel, both operating
# points. `snakemake export`; the files run in ONNX Runtime, DJL / QuPath, or
# `python -m cellseg.segment_exported` without torch.


rule export_fold:
    input:
        weights="results/train/fold{fold}/model_best.pt",
        thresholds="results/tune/thresholds.json",
    output:
        onnx="results/export/fold{fold}.onnx",
        card="results/export/fold{fold}.json",
    log:
        "logs/export/fold{fold}.log",
    benchmark:
        "results/benchmarks/export/fold{fold}.tsv"
    conda:
        f"{ENVS}/torch.yaml"
    resources:
        **job_resources("default"),
    params:
        train=TRAIN_CFG,
        classes=CLASSES,
        train_tile_size=config["tiles"]["size"],
        predict=PREDICT_SETTINGS,
        mpp=TRAIN_MPP,
        stain=config["stain"]["method"],
        code=script_digest("export_fold.py"),
    script:
        "../scripts/export_fold.py"


# The same fold with INT8 convolutions and matrix products (predict.backend: onnxruntime-int8),
# calibrated on its own training images: the fastest on a CPU (docs/benchmarks.md).
rule quantise_fold:
    input:
        weights="results/train/fold{fold}/model_best.pt",
        split="results/split/split.tsv",
        samples=all_sample_files,
        stain=stain_reference,
    output:
        "results/export/fold{fold}.int8.onnx",
    log:
        "logs/export/fold{fold}_int8.log",
    benchmark:
        "results/benchmarks/export/fold{fold}_int8.tsv"
    conda:
        f"{ENVS}/torch.yaml"
    resources:
        **job_resources("default"),
    params:
        train=TRAIN_CFG,
        source=SOURCE,
        classes=CLASSES,
        train_tile_size=config["tiles"]["size"],
        tile_size=PREDICT_SETTINGS["tile_size"],
        code=script_digest("quantise_fold.py"),
    script:
        "../scripts/quantise_fold.py"


rule export:
    input:
        expand(
            "results/export/fold{fold}.{ext}",
            fold=FOLDS,
            ext=["onnx", "json", "int8.onnx"],
        ),
