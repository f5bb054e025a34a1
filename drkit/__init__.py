"""drkit: database backup and disaster recovery, run as Prefect flows.

The ``drkit`` package is the core: plain, typed Python that knows nothing of
Prefect. ``tasks/`` and ``flows/`` wrap it; the CLI drives those flows.
"""

__version__ = "0.1.0"
