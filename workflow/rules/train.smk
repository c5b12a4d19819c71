# One Mask R-CNN per fold: each fold is its own job (its own GPU on a cluster).


rule train_fold:
    input:
        split="results/split/split.tsv",
        tiles=shard_tiles(),
        samples=all_sample_files,
        weights=train_weights_file,
        init_from=init_from_file,
        stain=stain_reference,  # the held-out images are normalised as the tiles are
    output:
        best="results/train/fold{fold}/model_best.pt",
        last="results/train/fold{fold}/model_last.pt",
        history="results/train/fold{fold}/history.csv",
        curve=report(
            "results/train/fold{fold}/curve.png",
            caption="../report/training_curve.rst",
            category="Training",
            subcategory="fold {fold}",
        ),
        summary="results/train/fold{fold}/train_summary.json",
    log:
        "logs/train/fold{fold}.log",
    cache: "omit-software"
    conda:
        f"{ENVS}/torch.yaml"
    threads: config["resources"]["train"]["cpus_per_task"]
    resources:
        **job_resources("train"),
    params:
        # The fold is a param so that the output cache (`cache:` above, whose provenance hash
        # ignores wildcards) keeps one entry per fold instead of one for all folds.
        fold=lambda wildcards: int(wildcards.fold),
        train=TRAIN_CFG,
        architecture=architecture_keys(),
        source=SOURCE,
        classes=CLASSES,
        tile_size=config["tiles"]["size"],
        val_overlap=config["predict"]["overlap"],
        mpp=TRAIN_MPP,
        code=script_digest("train_fold.py"),
    script:
        "../scripts/train_fold.py"


rule download_weights:
    """Fetch the configured pretrained weights once on the submitting host, for compute nodes
    without internet: run `snakemake download_weights`, then set train.weights_path to the file.
    """
    output:
        WEIGHTS_DOWNLOAD,
    log:
        "logs/download_weights/download_weights.log",
    benchmark:
        "results/benchmarks/download_weights/download_weights.tsv"
    localrule: True
    conda:
        f"{ENVS}/torch.yaml"
    resources:
        **job_resources("default"),
    params:
        train=TRAIN_CFG,
    script:
        "../scripts/download_weights.py"
