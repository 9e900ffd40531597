"""Evaluation: the tester's tasks and protocol, metrics, the fast inference path."""
