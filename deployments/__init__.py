"""Deployments built from the policy file's schedules; ``python -m deployments`` serves them all."""
