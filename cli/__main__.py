"""``python -m cli``: the same as the ``drkit`` command."""

from cli import app

app()
