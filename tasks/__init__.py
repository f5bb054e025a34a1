"""Prefect tasks: thin wrappers over drkit with the retry policy each step deserves."""
