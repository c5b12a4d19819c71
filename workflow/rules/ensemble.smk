# Weighted boxes fusion of the folds' predictions, with their masks averaged.


rule ensemble_folds:
    input:
        expand("results/predict/fold{fold}/{{subset}}", fold=FOLDS),
    output:
        directory("results/ensemble/{subset}"),
    params:
        weights=config["ensemble"]["weights"],
        iou_thr=config["ensemble"]["iou_thr"],
        skip_box_thr=config["ensemble"]["skip_box_thr"],
        conf_type=config["ensemble"]["conf_type"],
        absent_as_zero=config["ensemble"]["absent_as_zero"],
        code=script_digest("ensemble_folds.py"),
    log:
        "logs/ensemble/{subset}.log",
    benchmark:
        "results/benchmarks/ensemble/{subset}.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    script:
        "../scripts/ensemble_folds.py"
