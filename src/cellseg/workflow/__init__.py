"""What only the Snakemake glue needs: the configuration, code hashes, job logs, listings, header cache, docs."""
