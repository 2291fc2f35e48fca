"""``python -m autoprune.cli``: the same as the ``autoprune`` command."""

from autoprune.cli.main import main

main()
