# New images segmented by the trained fold ensemble at the `cells` operating point (one class
# per cell, one cell per pixel): per image a label image, QuPath GeoJSON, a cell table and an
# overlay; a summary over the images. An image is predicted in regions of whole blocks, one job
# each (segment.region_blocks), which one job per image joins (cellseg.outputs.segment_regions).
# Every fold, the calibration, fusion and predict settings are the workflow's own, through the
# one inference path (cellseg.inference.fold_ensemble).
# `snakemake segment --config segment_images=DIR` (or `segment.images` in config.yaml).


rule segment_region:
    input:
        image=segment_image_file,
        weights=[fold_model(fold=fold) for fold in FOLDS],
        thresholds="results/tune/cells.json",
        calibration=calibration_file,
        stain=stain_reference,
    output:
        "results/segment/{name}/regions/{region}.npz",
    log:
        "logs/segment/{name}/region{region}.log",
    benchmark:
        "results/benchmarks/segment/{name}/region{region}.tsv"
    wildcard_constraints:
        name="[^/]+",
        region=r"\d+",
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
        region_blocks=config["segment"]["region_blocks"],
        mpp=TRAIN_MPP,
        image_mpp=config["segment"]["mpp"],
        tissue=config["segment"]["tissue"],
        code=script_digest("segment_region.py"),
    script:
        "../scripts/segment_region.py"


rule gather_regions:
    input:
        image=segment_image_file,
        regions=region_files,
    output:
        labels="results/segment/{name}/labels.tif",
        geojson="results/segment/{name}/cells.geojson",
        csv="results/segment/{name}/cells.csv",
        overlay="results/segment/{name}/overlay.png",
        tissue="results/segment/{name}/tissue.png",
        tissue_json="results/segment/{name}/tissue.json",
        density="results/segment/{name}/density.png",
    log:
        "logs/segment/{name}.log",
    benchmark:
        "results/benchmarks/segment/{name}.tsv"
    wildcard_constraints:
        name="[^/]+",
    conda:
        f"{ENVS}/torch.yaml"
    resources:
        # the predict jobs' memory and time (a slide's cells are written here), no GPU, one CPU
        **job_resources("predict") | {"gpu": 0, "cpus_per_task": 1},
    params:
        classes=CLASSES,
        block_size=config["segment"]["block_size"],
        margin=config["segment"]["margin"],
        region_blocks=config["segment"]["region_blocks"],
        overlay_size=config["segment"]["overlay_size"],
        mpp=TRAIN_MPP,
        image_mpp=config["segment"]["mpp"],
        tissue=config["segment"]["tissue"],
        code=script_digest("gather_regions.py"),
    script:
        "../scripts/gather_regions.py"


rule summarise_segments:
    input:
        outputs=segment_outputs,
        benchmarks=lambda wildcards: sum(segment_benchmarks().values(), []),
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
        benchmarks=segment_benchmarks(),
        code=script_digest("summarise_segments.py"),
    script:
        "../scripts/summarise_segments.py"


rule segment:
    input:
        "results/segment/summary.csv",
        expand(
            "results/segment/{name}/{file}",
            name=SEGMENT_IMAGES,
            file=["cells.geojson", "overlay.png", "density.png"],
        ),
