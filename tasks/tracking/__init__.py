"""Every MLflow call of the pipeline: runs, the tracking-server check and the checkpoint pyfunc model."""
