"""Where a restoration at work looks whether it should stop (the page's Stop, a closed tab, Ctrl-C).

A check is a function of no arguments that raises to stop the work; it reads a :class:`threading.Event` or two,
so it costs next to nothing. :func:`checked_while` makes the work run it:

- on the CPU, before every PyTorch operation the restoring thread runs (:class:`CheckedAtEachOperation`): the
  network's, the tiling's and the embedding maps'. Checks before each layer (forward pre-hooks) were not enough
  there: the CPU's channels-last attention and feed-forward run their convolutions, products and softmax as
  functions, not as layers, and at the full-resolution levels of a large untiled image one of them ran for
  seconds before its ``project_out``, the next layer (the paper's network at 400x400 on a shared 2-core CPU: up to
  2.1 s between two layers' checks, 0.4 s between two operations'; both grow with the pixels, 16-fold at
  1600x1600);
- on a GPU, before each layer, as before: the restoring thread queues operations ahead of the GPU, so a stop
  waits for the queued work however often the thread looks, and a check per operation would cost a launch-bound
  forward (a small image) Python time at every one of its thousands of operations.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

Check = Callable[[], None]  # raises to stop the work


class CheckedAtEachOperation(TorchFunctionMode):
    """While active (in the thread that entered it), ``check()`` runs before every PyTorch function or tensor
    method called from Python, and an exception it raises stops the work there, before that operation runs.
    One check costs a few microseconds of Python per operation (the paper's network runs about 5,700 per
    forward, whatever the image's size)."""

    def __init__(self, check: Check):
        super().__init__()
        self.check = check

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.check()
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def checked_at_each_layer(model: nn.Module, check: Check) -> Iterator[None]:
    """``check()`` before the forward of every module of ``model`` (forward pre-hooks, removed on exit)."""
    handles = [m.register_forward_pre_hook(lambda module, args: check()) for m in model.modules()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def where_it_stops(device: torch.device) -> str:
    """Where a restoration on ``device`` stops once asked, in words: ``"at its next PyTorch operation"`` on the
    CPU, ``"at the network's next layer"`` elsewhere (:func:`checked_while`)."""
    return "at its next PyTorch operation" if device.type == "cpu" else "at the network's next layer"


def checked_while(model: nn.Module, device: torch.device, check: Check) -> contextlib.AbstractContextManager:
    """The context in which ``model`` restores on ``device`` with ``check()`` run as the module docstring says:
    before each operation on the CPU, before each layer elsewhere. Enter it in the thread that restores."""
    if device.type == "cpu":
        return CheckedAtEachOperation(check)
    return checked_at_each_layer(model, check)
