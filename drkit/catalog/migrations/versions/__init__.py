"""Catalog schema revisions, applied in order by Alembic (``0001_initial`` first)."""
