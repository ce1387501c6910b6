"""MLflow: the run's logger, its params and tags, datasets, the end-of-run summary."""
