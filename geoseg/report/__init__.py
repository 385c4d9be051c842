"""``report.html``: one self-contained page per run, with its scores, training curves and an offline map.

- :mod:`geoseg.report.html`: :func:`write_report` (the page, from what a run left in ``output_dir``).
- :mod:`geoseg.report.content`: the typed records the page shows, and :class:`ReportExtras`, the hook
  through which a later stage (impact) adds its per-zone table, images and vector layers.
- :mod:`geoseg.report.impact_view`: :func:`impact_extras`, those extras from the impact stage's outputs
  (its per-zone table, the flood extent image, flooded buildings and roads, zones); the page has them by default.
- :mod:`geoseg.report.mapview`, :mod:`geoseg.report.overlays`, :mod:`geoseg.report.vectors`: the map's layers.
- :mod:`geoseg.report.tables`, :mod:`geoseg.report.curves`: the tables and the inline SVG training curves.
"""

from geoseg.report.content import ImageOverlay, ImpactRow, ImpactTable, LatLonBounds, ReportExtras, VectorLayer
from geoseg.report.html import REPORT, report_path, write_report
from geoseg.report.impact_view import impact_extras

__all__ = [
    "REPORT",
    "ImageOverlay",
    "ImpactRow",
    "ImpactTable",
    "LatLonBounds",
    "ReportExtras",
    "VectorLayer",
    "impact_extras",
    "report_path",
    "write_report",
]
