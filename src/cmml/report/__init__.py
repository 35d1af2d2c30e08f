"""Results: aggregation of the evaluated score matrices, and the static report (tables, PNG plots, HTML)."""
