"""Stage plan (one description for Snakemake and DVC), dvc.yaml generation, atomic IO."""
