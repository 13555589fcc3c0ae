"""detrkit.models.ops."""
