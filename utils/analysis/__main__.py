"""``python -m utils.analysis``: the embedding figures of a WB checkpoint on your photos; see
:mod:`utils.analysis.own_photos`."""
import sys

from utils.errors import stopped_while_starting

with stopped_while_starting():
    from utils.analysis.own_photos import cli
    from utils.runtime import lean_shutdown, stop_signals_as_interrupt

stop_signals_as_interrupt()  # kill / timeout / a closed terminal stop it as Ctrl-C does: one line naming it
with lean_shutdown():
    sys.exit(cli())
