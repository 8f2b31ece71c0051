"""``python -m dualdb`` runs the command line."""

from dualdb.cli import main

main()
