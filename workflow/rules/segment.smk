# New images segmented by the trained fold ensemble at the `cells` operating point (one class
# per cell, one cell per pixel): per image a label image, QuPath GeoJSON, a cell table and an
# overlay; a summary over the images. Every fold, the calibration, fusion and predict settings
# are the workflow's own, through the one inference path (cellseg.inference.fold_ensemble).
# `snakemake segment --config segment_images=DIR` (or `segment.images` in config.yaml).


rule segment_image:
    input:
        image=segment_image_file,
        weights=expand("results/train/fold{fold}/model_best.pt", fold=FOLDS),
        thresholds="results/tune/cells.json",
        calibration=calibration_file,
        stain=stain_reference,
    output:
        labels="results/segment/{name}/labels.tif",
        geojson="results/segment/{name}/cells.geojson",
        csv="results/segment/{name}/cells.csv",
        overlay="results/segment/{name}/overlay.png",
        tissue="results/segment/{name}/tissue.png",
    log:
        "logs/segment/{name}.log",
    benchmark:
        "results/benchmarks/segment/{name}.tsv"
    wildcard_constraints:
        name="[^/]+",
    conda:
        f"{ENVS}/torch.yaml"
    threads: config["resources"]["predict"]["cpus_per_task"]
    resources:
        **job_resources("predict"),
    params:
        train=TRAIN_CFG,
        classes=CLASSES,
        folds=FOLDS,
        train_tile_size=config["tiles"]["size"],
        predict=PREDICT_SETTINGS,
        backend=config["predict"]["backend"],
        ensemble=FUSION_SETTINGS,
        block_size=config["segment"]["block_size"],
        margin=config["segment"]["margin"],
        overlay_size=config["segment"]["overlay_size"],
        mpp=TRAIN_MPP,
        image_mpp=config["segment"]["mpp"],
        tissue=config["segment"]["tissue"],
        code=script_digest("segment_image.py"),
    script:
        "../scripts/segment_image.py"


rule summarise_segments:
    input:
        segment_outputs,
    output:
        "results/segment/summary.csv",
    log:
        "logs/segment/summary.log",
    benchmark:
        "results/benchmarks/segment/summary.tsv"
    conda:
        f"{ENVS}/torch.yaml"
    resources:
        **job_resources("default"),
    params:
        classes=CLASSES,
        code=script_digest("summarise_segments.py"),
    script:
        "../scripts/summarise_segments.py"


rule segment:
    input:
        "results/segment/summary.csv",
        expand(
            "results/segment/{name}/{file}",
            name=SEGMENT_IMAGES,
            file=["cells.geojson", "overlay.png"],
        ),
