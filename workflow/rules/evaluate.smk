# Scores of each fold alone, the ensemble, and the ensemble after tuning, on the validation set
# and, when its ground truth is given (data.test_gt), on the test set; per class, and with the
# classes merged (class-agnostic, the one table of a test set labelled with other classes).


rule evaluate_predictions:
    input:
        folds=expand("results/predict/fold{fold}/val", fold=FOLDS),
        ensemble="results/ensemble/val",
        thresholds="results/tune/thresholds.json",
        split="results/split/split.tsv",
        samples=all_sample_files,
    output:
        scores=report(
            "results/evaluate/scores.tsv",
            caption="../report/metrics_table.rst",
            category="Evaluation",
        ),
        agnostic="results/evaluate/scores_agnostic.tsv",
        per_image="results/evaluate/per_image.tsv",
        pr_curve="results/evaluate/pr_curve.tsv",
    log:
        "logs/evaluate/evaluate_predictions.log",
    benchmark:
        "results/benchmarks/evaluate/evaluate_predictions.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        source=SOURCE,
        classes=CLASSES,
        folds=FOLDS,
        max_dets=config["evaluate"]["max_dets"],
        evaluator=config["evaluate"]["evaluator"],
        code=script_digest("evaluate_predictions.py"),
    script:
        "../scripts/evaluate_predictions.py"


rule evaluate_test:
    input:
        folds=expand("results/predict/fold{fold}/test", fold=FOLDS),
        ensemble="results/ensemble/test",
        thresholds="results/tune/thresholds.json",
        test=test_files,
        truth=test_ground_truth_files,
    output:
        **{
            name: report(
                path, caption="../report/test_scores.rst", category="Evaluation"
            )
            for name, path in test_score_files().items()
        },
    log:
        "logs/evaluate/evaluate_test.log",
    benchmark:
        "results/benchmarks/evaluate/evaluate_test.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        source=TEST_SOURCE,
        classes=CLASSES,
        folds=FOLDS,
        max_dets=config["evaluate"]["max_dets"],
        evaluator=config["evaluate"]["evaluator"],
        code=script_digest("evaluate_test.py"),
    script:
        "../scripts/evaluate_test.py"
