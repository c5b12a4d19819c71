# Weighted boxes fusion of the folds' predictions, with their masks averaged; optionally each
# fold's scores calibrated first (ensemble.calibrate), by maps fitted on the validation set.


rule calibrate_folds:
    input:
        expand("results/predict/fold{fold}/val", fold=FOLDS),
    output:
        "results/ensemble/calibration.json",
    log:
        "logs/ensemble/calibration.log",
    benchmark:
        "results/benchmarks/ensemble/calibration.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        method=config["ensemble"]["calibrate"],
        folds=FOLDS,
        code=script_digest("calibrate_folds.py"),
    script:
        "../scripts/calibrate_folds.py"


rule ensemble_folds:
    input:
        folds=expand("results/predict/fold{fold}/{{subset}}", fold=FOLDS),
        calibration=calibration_file,
    output:
        directory("results/ensemble/{subset}"),
    log:
        "logs/ensemble/{subset}.log",
    benchmark:
        "results/benchmarks/ensemble/{subset}.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        folds=FOLDS,
        fusion=FUSION_SETTINGS,
        code=script_digest("ensemble_folds.py"),
    script:
        "../scripts/ensemble_folds.py"
