"""Alembic migrations of the drkit catalog, bundled so ``Catalog.migrate()`` works from an installed wheel.

``env.py`` and ``versions/`` are loaded by Alembic from this directory; nothing imports them directly.
This is a regular package (not just a directory) so wheel builds pick up the ``.py`` files; the
``script.py.mako`` template needs to be declared as package data.
"""
