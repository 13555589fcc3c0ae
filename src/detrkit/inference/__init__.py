"""detrkit.inference."""
