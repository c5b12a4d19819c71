# The synthetic demo dataset, written in the reference layout with the real files' quirks.


rule demo_dataset:
    output:
        directory(DEMO_DIR),
    log:
        "logs/demo/demo_dataset.log",
    benchmark:
        "results/benchmarks/demo/demo_dataset.tsv"
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    params:
        seed=config["demo"]["seed"],
        n_train=config["demo"]["n_train"],
        n_test=config["demo"]["n_test"],
        min_size=config["demo"]["min_size"],
        max_size=config["demo"]["max_size"],
        classes=CLASSES,
        code=script_digest("demo_dataset.py"),
    script:
        "../scripts/demo_dataset.py"
