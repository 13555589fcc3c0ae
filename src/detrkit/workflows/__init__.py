"""What chains the library for a user: the demo, analysing a run, predicting a folder, ablations,
sweeps and the detector benchmark.

Above ``engine``, ``inference`` and ``runs``; below ``cli`` (which parses, calls these and prints).
"""
