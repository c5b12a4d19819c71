"""What only the Snakemake glue needs: config checks and recipes, code hashes, job logs, listings, header cache, docs."""
