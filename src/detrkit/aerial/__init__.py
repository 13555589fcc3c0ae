"""detrkit.aerial."""
