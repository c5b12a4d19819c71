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
        # The image id, so that the output cache (whose hash ignores wildcards) never hands one
        # image's outputs to another with identical files.
        image=lambda wildcards: wildcards.image,
        code=script_digest("compute_maps.py"),
    log:
        "logs/maps/{image}.log",
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    cache: "omit-software"
    script:
        "../scripts/compute_maps.py"
