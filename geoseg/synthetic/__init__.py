"""Synthetic aerial scenes for demos and tests.

``generate_demo(out)`` writes a training scene, a larger survey scene (with a
no-data collar) after a flood and the same ground before it, each as an RGB
GeoTIFF plus its labels as a GeoPackage of polygons and as a label raster, and
the flood files of :func:`flood_demo_files` (roads, districts, flood truth,
flooded buildings). ``make_rgbn_scene(out)`` writes a small
4-band (R, G, B, NIR) uint16 scene from the same generator. The scenes are
built so that the classes overlap in colour and only shape, texture and neighbourhood tell them apart
(see :mod:`geoseg.synthetic.render`).
"""

from geoseg.synthetic.flood import FloodDemoFiles, flood_demo_files
from geoseg.synthetic.layout import DEMO_CLASSES
from geoseg.synthetic.rgbn import make_rgbn_scene
from geoseg.synthetic.scene import SceneFiles, generate_demo, make_scene

__all__ = [
    "DEMO_CLASSES",
    "FloodDemoFiles",
    "SceneFiles",
    "flood_demo_files",
    "generate_demo",
    "make_rgbn_scene",
    "make_scene",
]
