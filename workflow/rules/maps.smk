# Center heatmap and boundary map of each training image.


rule compute_maps:
    input:
        sample_files,
    output:
        "results/maps/{image}.npz",
    params:
        source=SOURCE,
        center_sigma=config["maps"]["center_sigma"],
        boundary_width=config["maps"]["boundary_width"],
        code=script_digest("compute_maps.py"),
    log:
        "logs/maps/{image}.log",
    benchmark:
        "results/benchmarks/maps/{image}.tsv"
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    script:
        "../scripts/compute_maps.py"
