"""NanoFlux benchmarks: build throughput against the endpoint limit and against distilabel, novelty filter scaling,
and training cost. Run them with `python -m benchmarks.run` (or `make bench`); see benchmarks/run.py.

Nothing heavy is imported here: `benchmarks.distilabel_pipeline` also runs in a virtual environment that has
distilabel but not NanoFlux.
"""
