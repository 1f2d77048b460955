"""``python -m stimsim.cli`` runs the command line (as the ``stimsim`` console script does)."""

from . import main

main()
