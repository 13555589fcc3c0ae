"""detrkit.models."""
