"""cellseg: multi-class cell instance segmentation, as a library behind a Snakemake pipeline."""

__version__ = "0.1.0"
