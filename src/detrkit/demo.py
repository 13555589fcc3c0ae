"""``python -m detrkit.demo`` (``make demo``): runs :func:`detrkit.workflows.demo.main`."""

from __future__ import annotations

import sys

from detrkit.workflows.demo import main, run_demo

__all__ = ["main", "run_demo"]

if __name__ == "__main__":
    sys.exit(main())
