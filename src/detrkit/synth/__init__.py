"""detrkit.synth."""
