"""``python -m llamavoice`` runs the console script."""

from llamavoice.cli import main

main()
