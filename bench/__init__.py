"""Benchmarks for drkit (run as modules, e.g. ``python -m bench.backup``); not tests."""
