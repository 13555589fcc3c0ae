"""detrkit.app."""
