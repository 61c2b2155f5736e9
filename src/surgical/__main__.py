"""`python -m surgical ...`: the same CLI as the `surgical` command."""

from .cli import main

main()
