"""``python -m utils.demo`` (what ``make demo`` runs): see :mod:`utils.demo.run`."""
from utils.demo.run import cli

cli()
