"""Deployments built from the policy file: scheduled flows and on-demand runbooks; ``python -m deployments`` serves
them all, ``deployments.prefect_yaml`` writes them as ``prefect.yaml``."""
