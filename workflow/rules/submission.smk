# The leaderboard files: test-set predictions at the leaderboard point as COCO RLE, validated,
# and zipped; optionally a Kaggle-style CSV at the cells point (its metric counts every false
# positive, and its masks may not overlap).


rule make_submission:
    input:
        ensemble="results/ensemble/test",
        thresholds="results/tune/leaderboard.json",
        test=test_files,
    output:
        json="results/submission/test-results.json",
        zip="results/submission/submission.zip",
    log:
        "logs/submission/make_submission.log",
    benchmark:
        "results/benchmarks/submission/make_submission.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        source=TEST_SOURCE,
        classes=CLASSES,
        code=script_digest("make_submission.py"),
    script:
        "../scripts/make_submission.py"


rule make_kaggle_csv:
    input:
        ensemble="results/ensemble/test",
        thresholds="results/tune/cells.json",
        test=test_files,
    output:
        "results/submission/submission.csv",
    log:
        "logs/submission/make_kaggle_csv.log",
    benchmark:
        "results/benchmarks/submission/make_kaggle_csv.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    params:
        source=TEST_SOURCE,
        classes=CLASSES,
        pixel_order=config["submission"]["kaggle_csv"],
        code=script_digest("make_kaggle_csv.py"),
    script:
        "../scripts/make_kaggle_csv.py"
