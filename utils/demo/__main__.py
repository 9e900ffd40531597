"""``python -m utils.demo`` (what ``make demo`` runs): see :mod:`utils.demo.run`."""
import sys

from utils.demo.run import cli

sys.exit(cli())
