"""``python -m mme.cli``."""

from mme.cli import main

main()
