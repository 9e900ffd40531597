"""``python -m utils.demo`` (what ``make demo`` runs): see :mod:`utils.demo.run`."""
from utils.demo.run import get_args_parser, main
from utils.runtime import tune_cpu_allocator

tune_cpu_allocator()  # as trainer_bary.py and tester_bary.py do
main(get_args_parser().parse_args())
