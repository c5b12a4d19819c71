# Validation hold-out and K folds, stratified by each image's class content.


rule split_dataset:
    input:
        all_sample_files,
    output:
        "results/split/split.tsv",
    log:
        "logs/split/split_dataset.log",
    cache: "omit-software"
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    params:
        source=SOURCE,
        image_ids=TRAIN_IDS,
        val_fraction=config["split"]["val_fraction"],
        folds=config["split"]["folds"],
        seed=config["split"]["seed"],
        group_by=config["split"]["group_by"],
        code=script_digest("split_dataset.py"),
    script:
        "../scripts/split_dataset.py"
