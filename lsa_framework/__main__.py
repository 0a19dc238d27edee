"""python -m lsa_framework: the same as the lsaf command."""

from lsa_framework.cli import main

main()
