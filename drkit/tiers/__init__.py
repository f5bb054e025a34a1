"""Backups in storage tiers: what their objects are called, how they move, and rebuilding the catalog from them.

- :mod:`drkit.tiers.naming`: object keys, the labels (blob metadata, index tags) a store keeps about a
  backup, and where a tier keeps its objects.
- :mod:`drkit.tiers.moves`: copy, move, delete, rehydrate and re-archive a backup's objects; the
  retention sweep's plan and actions.
- :mod:`drkit.tiers.rebuild`: the sealed ``backup.json`` descriptor beside every copy, and rebuilding the
  catalog from a tier's descriptors alone.
"""
