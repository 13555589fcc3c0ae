"""The run folder: layout, atomic checkpoint I/O, metrics files, the run logger, and the one
:func:`restore` that predict, val, analyze, export and aerial use.

Below ``engine``, ``inference`` and ``aerial``; imports only ``config``, ``models``, ``data``,
``evaluation`` and the leaf modules.
"""

from detrkit.runs.restore import DETECTOR, CheckpointKind, Restored, restore

__all__ = ["DETECTOR", "CheckpointKind", "Restored", "restore"]
