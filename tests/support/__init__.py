"""Helpers shared by the tests: real PostgreSQL sandboxes and data fingerprints."""
