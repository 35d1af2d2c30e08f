"""Report building blocks shared by the families, and the results index (``results/index.*``)."""
