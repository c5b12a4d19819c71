# The leaderboard file: test-set predictions as COCO RLE, validated, and zipped.


rule make_submission:
    input:
        ensemble="results/ensemble/test",
        thresholds="results/tune/thresholds.json",
        test=test_files,
    output:
        json="results/submission/test-results.json",
        zip="results/submission/submission.zip",
    params:
        source=SOURCE,
        classes=CLASSES,
        code=script_digest("make_submission.py"),
    log:
        "logs/submission/make_submission.log",
    benchmark:
        "results/benchmarks/submission/make_submission.tsv"
    conda:
        f"{ENVS}/eval.yaml"
    resources:
        **job_resources("default"),
    script:
        "../scripts/make_submission.py"
