"""``python -m trustbus``."""

from trustbus.cli import main

main()
