"""detrkit.cli."""
