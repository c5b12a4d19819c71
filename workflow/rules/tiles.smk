# Overlapping training tiles of image, masks and maps, with an index table, one job per shard
# of training images (preprocess.shards).


rule make_tiles:
    input:
        samples=shard_sample_files,
        # The centre/boundary maps are the aux heads' targets and nothing else reads them:
        # without train.aux_heads no job computes them.
        maps=lambda wildcards: (
            f"results/maps/shard_{wildcards.shard}.npz"
            if TRAIN_CFG["aux_heads"]
            else []
        ),
        stain=stain_reference,
    output:
        tiles="results/tiles/shard_{shard}.npz",
        index="results/tiles/shard_{shard}.tsv",
    log:
        "logs/tiles/shard_{shard}.log",
    cache: "omit-software"
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    params:
        source=SOURCE,
        size=config["tiles"]["size"],
        overlap=config["tiles"]["overlap"],
        skip_empty=config["tiles"]["skip_empty"],
        min_instance_area=config["tiles"]["min_instance_area"],
        with_maps=TRAIN_CFG["aux_heads"],
        # The shard's images: adding or removing one re-runs this shard only. Also keeps the
        # output cache (whose hash ignores wildcards) from handing one shard's tiles to another.
        image_ids=shard_ids,
        code=script_digest("make_tiles.py"),
    script:
        "../scripts/make_tiles.py"
