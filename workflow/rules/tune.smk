# Per-class score and mask thresholds and the NMS threshold, chosen on the validation set's
# ensembled predictions.


rule tune_thresholds:
    input:
        ensemble="results/ensemble/val",
        split="results/split/split.tsv",
        samples=all_sample_files,
    output:
        thresholds="results/tune/thresholds.json",
        trials="results/tune/trials.tsv",
    params:
        source=SOURCE,
        classes=CLASSES,
        metric=config["tune"]["metric"],
        search={
            key: config["tune"][key]
            for key in ("score_thresholds", "mask_thresholds", "nms_thresholds")
        },
        max_dets=config["evaluate"]["max_dets"],
        evaluator=config["evaluate"]["evaluator"],
        code=script_digest("tune_thresholds.py"),
    log:
        "logs/tune/tune_thresholds.log",
    benchmark:
        "results/benchmarks/tune/tune_thresholds.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    script:
        "../scripts/tune_thresholds.py"
