"""detrkit.evaluation."""
