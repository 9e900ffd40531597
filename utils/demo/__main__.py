"""``python -m utils.demo`` (what ``make demo`` runs): see :mod:`utils.demo.run`."""
import sys

from utils.errors import stopped_while_starting

with stopped_while_starting():
    from utils.demo.run import cli
    from utils.runtime import lean_shutdown, stop_signals_as_interrupt

stop_signals_as_interrupt()  # kill / timeout / a closed terminal stop it as Ctrl-C does (the training is saved)
with lean_shutdown():
    sys.exit(cli())
