"""``python -m utils.app`` (what ``make app`` runs): see :mod:`utils.app.main`."""
import sys

from utils.app.main import cli

sys.exit(cli())
