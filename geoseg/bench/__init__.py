"""Benchmarks (``geoseg bench predict|decode|train|merge|pipeline``, one JSON line each) and their baselines.

- :mod:`geoseg.bench.commands`: the ``geoseg bench`` command line.
- :mod:`geoseg.bench.predict`: the predict stage against the model alone, with peak memory.
- :mod:`geoseg.bench.decode`: reading the tile windows and nothing else (the feed's ceiling).
- :mod:`geoseg.bench.pipeline`: every step after prediction on a synthetic survey mosaic.
- :mod:`geoseg.bench.train`: Ray Train with 1 and 2 workers against a plain loop.
- :mod:`geoseg.bench.merge`: geoseg's cross-tile instance merge against SAHI's (:mod:`geoseg.bench.sahi_merge`).
- :mod:`geoseg.bench.measure`: memory of a process tree and other work's CPU share.

Scenes come from :mod:`geoseg.synthetic.blocks`.
"""

__all__: list[str] = []
