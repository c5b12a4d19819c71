# Overlapping training tiles of image, masks and maps, with an index table per image.


rule make_tiles:
    input:
        sample=sample_files,
        # The centre/boundary maps are the aux heads' targets and nothing else reads them:
        # without train.aux_heads no job computes them.
        maps=lambda wildcards: f"results/maps/{wildcards.image}.npz" if TRAIN_CFG["aux_heads"] else [],
        stain=stain_reference,
    output:
        tiles="results/tiles/{image}.npz",
        index="results/tiles/{image}.tsv",
    params:
        source=SOURCE,
        size=config["tiles"]["size"],
        overlap=config["tiles"]["overlap"],
        skip_empty=config["tiles"]["skip_empty"],
        min_instance_area=config["tiles"]["min_instance_area"],
        with_maps=TRAIN_CFG["aux_heads"],
        # The image id, so that the output cache (whose hash ignores wildcards) never hands one
        # image's outputs to another with identical files.
        image=lambda wildcards: wildcards.image,
        code=script_digest("make_tiles.py"),
    log:
        "logs/tiles/{image}.log",
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    cache: "omit-software"
    script:
        "../scripts/make_tiles.py"
