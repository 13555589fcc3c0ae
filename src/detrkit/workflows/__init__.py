"""Workflows: what chains training, evaluation and reporting for a user (benchmark, ...)."""
