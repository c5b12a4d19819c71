# Center heatmap and boundary map of the training images, one job per shard (preprocess.shards).


rule compute_maps:
    input:
        shard_sample_files,
    output:
        "results/maps/shard_{shard}.npz",
    log:
        "logs/maps/shard_{shard}.log",
    cache: "omit-software"
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    params:
        source=SOURCE,
        center_sigma=config["maps"]["center_sigma"],
        boundary_width=config["maps"]["boundary_width"],
        # The shard's images: adding or removing one re-runs this shard only. Also keeps the
        # output cache (whose hash ignores wildcards) from handing one shard's maps to another.
        image_ids=shard_ids,
        code=script_digest("compute_maps.py"),
    script:
        "../scripts/compute_maps.py"
