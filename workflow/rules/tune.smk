# The two operating points, each tuned on the validation set's ensembled predictions:
# `leaderboard` (per-class score / mask thresholds and per-class NMS, for the ranking metric of
# tune.metric: the COCO submission and the AP tables) and `cells` (thresholds and NMS across
# classes, for tune.cells.metric: segment, the label images, overlays, counts, the Kaggle CSV).
# Each point is its own job, so changing one point's settings re-runs only what reads it.


rule tune_thresholds:
    input:
        ensemble="results/ensemble/val",
        split="results/split/split.tsv",
        samples=all_sample_files,
    output:
        thresholds="results/tune/{point}.json",
        trials="results/tune/{point}_trials.tsv",
    log:
        "logs/tune/tune_{point}.log",
    benchmark:
        "results/benchmarks/tune/tune_{point}.tsv"
    wildcard_constraints:
        point="leaderboard|cells",
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        source=SOURCE,
        classes=CLASSES,
        settings=lambda wildcards: tune_settings(wildcards.point),
        max_dets=config["evaluate"]["max_dets"],
        evaluator=config["evaluate"]["evaluator"],
        code=script_digest("tune_thresholds.py"),
    script:
        "../scripts/tune_thresholds.py"


# A JSON merge: on a cluster it runs where Snakemake runs, not through the queue.
rule collect_thresholds:
    input:
        leaderboard="results/tune/leaderboard.json",
        cells="results/tune/cells.json",
    output:
        "results/tune/thresholds.json",
    log:
        "logs/tune/collect_thresholds.log",
    benchmark:
        "results/benchmarks/tune/collect_thresholds.tsv"
    localrule: True
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        code=script_digest("collect_thresholds.py"),
    script:
        "../scripts/collect_thresholds.py"
