"""Benchmarks (``geoseg bench predict|train|merge``, one JSON line each) and the baselines they compare against.

- :mod:`geoseg.bench.predict`: the predict stage against the model alone, with peak memory.
- :mod:`geoseg.bench.train`: Ray Train with 1 and 2 workers against a plain loop.
- :mod:`geoseg.bench.merge`: geoseg's cross-tile instance merge against SAHI's (:mod:`geoseg.bench.sahi_merge`).
- :mod:`geoseg.bench.measure`: memory of a process tree and other work's CPU share.

Scenes come from :mod:`geoseg.synthetic.blocks`.
"""

__all__: list[str] = []
