"""``python -m cli``: the same as the ``drkit`` command."""

from cli.entry import main

main()
