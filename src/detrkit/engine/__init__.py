"""detrkit.engine."""
