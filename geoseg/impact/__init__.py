"""Impact: what the event changed, from the post-event mosaic and a reference of before.

So far the flood extent (:mod:`geoseg.impact.flood`): water now that was not water before, against
a pre-event mosaic or a permanent-water layer (:mod:`geoseg.impact.reference`).
"""

from geoseg.impact.flood import FloodCounts, FloodSummary, flood_chunk, write_flood
from geoseg.impact.reference import PermanentWater, PreEventMosaic

__all__ = ["FloodCounts", "FloodSummary", "PermanentWater", "PreEventMosaic", "flood_chunk", "write_flood"]
