"""The pipeline package: ``graph`` (the stages of a pipeline YAML, for any teacher and data), ``runner`` (order,
content-addressed caching, resume), ``report`` (the run report) and ``cli`` (``surgical run``).

Every stage has one entry shape, ``stage(cfg, inputs, out_dir) -> Result`` (see ``runner.Stage``)."""
