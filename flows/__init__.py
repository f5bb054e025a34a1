"""Prefect flows: the runbooks, composed of tasks. Ordering, locking and approvals live here."""
