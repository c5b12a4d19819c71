# New images segmented by the trained fold ensemble with the tuned thresholds: per image a
# label image, QuPath GeoJSON, a cell table and an overlay; a summary over the images.
# `snakemake segment --config segment_images=DIR` (or `segment.images` in config.yaml).


rule segment_image:
    input:
        image=segment_image_file,
        weights=expand("results/train/fold{fold}/model_best.pt", fold=FOLDS),
        thresholds="results/tune/thresholds.json",
        stain=stain_reference,
    output:
        labels="results/segment/{name}/labels.tif",
        geojson="results/segment/{name}/cells.geojson",
        csv="results/segment/{name}/cells.csv",
        overlay="results/segment/{name}/overlay.png",
    wildcard_constraints:
        name="[^/]+",
    params:
        train=TRAIN_CFG,
        classes=CLASSES,
        train_tile_size=config["tiles"]["size"],
        predict={key: config["predict"][key] for key in ("tile_size", "overlap", "tta", "batch_size", "tta_fusion")},
        ensemble={key: config["ensemble"][key] for key in ("weights", "iou_thr", "skip_box_thr", "conf_type", "absent_as_zero")},
        block_size=config["segment"]["block_size"],
        margin=config["segment"]["margin"],
        overlay_size=config["segment"]["overlay_size"],
        code=script_digest("segment_image.py"),
    log:
        "logs/segment/{name}.log",
    benchmark:
        "results/benchmarks/segment/{name}.tsv"
    threads: config["resources"]["predict"]["cpus_per_task"]
    resources:
        **job_resources("predict"),
    conda:
        f"{ENVS}/torch.yaml"
    script:
        "../scripts/segment_image.py"


rule summarise_segments:
    input:
        segment_outputs,
    output:
        "results/segment/summary.csv",
    params:
        classes=CLASSES,
        code=script_digest("summarise_segments.py"),
    log:
        "logs/segment/summary.log",
    benchmark:
        "results/benchmarks/segment/summary.tsv"
    conda:
        f"{ENVS}/torch.yaml"
    resources:
        **job_resources("default"),
    script:
        "../scripts/summarise_segments.py"


rule segment:
    input:
        "results/segment/summary.csv",
        expand("results/segment/{name}/{file}", name=SEGMENT_IMAGES, file=["cells.geojson", "overlay.png"]),
