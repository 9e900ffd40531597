"""``python -m utils.app`` (what ``make app`` runs): see :mod:`utils.app.main`."""
import sys

from utils.errors import stopped_while_starting

with stopped_while_starting():
    from utils.app.main import cli

sys.exit(cli())
