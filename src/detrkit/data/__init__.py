"""detrkit.data."""
