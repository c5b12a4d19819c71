"""Read every training image once (validating it), count instances per class, split."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).resolve().parents[1] / "src"))

from cellseg.common.files import atomic_path
from cellseg.data.split import instance_count_table, make_split
from cellseg.workflow.joblog import job_logging

with job_logging(snakemake.log[0]) as log:
    p = snakemake.params
    counts = instance_count_table(p.source, p.image_ids)
    table = make_split(counts, p.val_fraction, p.folds, p.seed, p.group_by)
    with atomic_path(snakemake.output[0]) as tmp:
        table.to_csv(tmp, sep="\t", index=False)
    log.info("split %d images:\n%s", len(table), table.groupby(["subset", "fold"]).size())
