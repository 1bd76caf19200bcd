"""Recipe schema, stage runner, MLflow tracking and the ``ispdc`` command line."""
