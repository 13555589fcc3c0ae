"""Buildings, GSD and built-up area from aerial and satellite images (issue 6 / system 002).

Modules: ``gsd`` (GSD sources, exact pixel areas), ``synth`` (generated GeoTIFF dataset with known
areas), ``data`` (windowed Inria crops), ``model`` (U-Net + ASPP + GSD head), ``losses``
(Dice, Focal, Boundary, GSD), ``train`` / ``config`` / ``metrics`` (training runs), ``tiling``
(streamed, blended tiled prediction), ``area`` / ``vector`` (areas, buildings, GeoJSON/CSV),
``predict`` (the whole pipeline on a file), ``default_model`` (the small built-in model).
"""
