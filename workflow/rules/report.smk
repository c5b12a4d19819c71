# Figures for `snakemake --report`: per-class AP, PR curve, score table, best and worst
# validation images.


rule plot_report:
    input:
        scores="results/evaluate/scores.tsv",
        per_image="results/evaluate/per_image.tsv",
        pr_curve="results/evaluate/pr_curve.tsv",
        ensemble="results/ensemble/val",
        thresholds="results/tune/thresholds.json",
        summaries=expand("results/train/fold{fold}/train_summary.json", fold=FOLDS),
        split="results/split/split.tsv",
        samples=all_sample_files,
    output:
        per_class=report(
            "results/report/per_class_ap.png",
            caption="../report/class_ap.rst",
            category="Evaluation",
        ),
        pr_curve=report(
            "results/report/pr_curve.png",
            caption="../report/pr_curve.rst",
            category="Evaluation",
        ),
        table=report(
            "results/report/scores_table.png",
            caption="../report/scores_table.rst",
            category="Evaluation",
        ),
        best=report(
            "results/report/best_image.png",
            caption="../report/overlay.rst",
            category="Examples",
        ),
        worst=report(
            "results/report/worst_image.png",
            caption="../report/overlay.rst",
            category="Examples",
        ),
    log:
        "logs/report/plot_report.log",
    benchmark:
        "results/benchmarks/report/plot_report.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        source=SOURCE,
        classes=CLASSES,
        folds=FOLDS,
        code=script_digest("plot_report.py"),
    script:
        "../scripts/plot_report.py"
