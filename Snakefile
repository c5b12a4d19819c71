# cellseg: multi-class cell instance segmentation with Mask R-CNN, from images and per-class
# instance masks to trained fold models, scores and a COCO-RLE submission.
import sys
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")
sys.path.insert(0, str(Path(workflow.basedir) / "src"))

from cellseg.workflow.config_file import check_yaml_syntax
from cellseg.common.errors import ConfigError

try:
    check_yaml_syntax("config.yaml")  # Snakemake's own YAML error names no file
except ConfigError as error:
    sys.exit(f"ConfigError: {error}")


configfile: "config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/demo.smk"
include: "workflow/rules/split.smk"
include: "workflow/rules/maps.smk"
include: "workflow/rules/stain.smk"
include: "workflow/rules/tiles.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/predict.smk"
include: "workflow/rules/ensemble.smk"
include: "workflow/rules/tune.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/submission.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/segment.smk"
include: "workflow/rules/export.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
