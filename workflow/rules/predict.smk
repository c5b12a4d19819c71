# Inference of each fold's model on the validation and test images (tiled, with TTA).


rule predict_fold:
    input:
        weights=fold_model,
        split="results/split/split.tsv",
        images=subset_files,
        stain=stain_reference,
    output:
        directory("results/predict/fold{fold}/{subset}"),
    log:
        "logs/predict/fold{fold}_{subset}.log",
    benchmark:
        "results/benchmarks/predict/fold{fold}_{subset}.tsv"
    conda:
        f"{ENVS}/torch.yaml"
    threads: config["resources"]["predict"]["cpus_per_task"]
    resources:
        **job_resources("predict"),
    params:
        train=TRAIN_CFG,
        source=subset_source,
        classes=CLASSES,
        train_tile_size=config["tiles"]["size"],
        predict=PREDICT_SETTINGS,
        backend=config["predict"]["backend"],
        mpp=TRAIN_MPP,
        code=script_digest("predict_fold.py"),
    script:
        "../scripts/predict_fold.py"
