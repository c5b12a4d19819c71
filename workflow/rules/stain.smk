# The stain target that every image the model sees is normalised toward (stain.method), fitted
# once per dataset. With stain.method: none no rule asks for it and no job runs.


rule fit_stain_reference:
    input:
        stain_reference_inputs,
    output:
        "results/stain/reference.json",
    log:
        "logs/stain/fit_stain_reference.log",
    cache: "omit-software"
    conda:
        f"{ENVS}/data.yaml"
    resources:
        **job_resources("default"),
    params:
        method=config["stain"]["method"],
        reference=config["stain"]["reference"],
        source=SOURCE,
        image_ids=TRAIN_IDS,
        code=script_digest("fit_stain_reference.py"),
    script:
        "../scripts/fit_stain_reference.py"
