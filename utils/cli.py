"""One spelling style for every command's flags, and the argparse types the commands share (:func:`at_least`,
:func:`number_above`, :func:`image_side`, the reference's own ``--backbone`` names: :func:`backbone_name`).

The reference scripts spell flags three ways (``--batchSize``, ``--patch_size``, ``--de_type``), the
project's own are kebab-case (``--output-dir``), and PromptIR's scripts use snake_case
(``--batch_size``). :func:`one_spelling` makes a parser accept every multi-word flag in kebab-case
and in snake_case beside the spelling it was declared with, and shows each flag once in the help,
in kebab-case, naming the reference's own spelling where it differs (``--batch-size`` "also
--batchSize"). The reference's commands run unchanged.
"""
from __future__ import annotations

import argparse
import math
import re


def kebab(flag: str) -> str:
    """``--batchSize`` / ``--patch_size`` -> ``--batch-size`` / ``--patch-size`` (short flags unchanged)."""
    if not flag.startswith("--"):
        return flag
    name = re.sub(r"(?<=[a-z0-9])([A-Z])", r"-\1", flag[2:])
    return "--" + name.replace("_", "-").lower()


def _snake(flag: str) -> str:
    return "--" + kebab(flag)[2:].replace("-", "_")


class OneSpellingHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Help that shows each flag by its first option string only (:func:`one_spelling` puts the
    kebab-case one first and names the others in the help text), and a flag's default once: argparse's
    "(default: ...)" is left off where the help already says its default, where it is None, empty (``""``,
    ``[]``: not given) or a switch's."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if re.search(r"(^|[(;,] ?)default\b", text, flags=re.I) or action.default in (None, "", []) \
                or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)

    def _format_action_invocation(self, action: argparse.Action) -> str:
        if not action.option_strings or isinstance(action, argparse.BooleanOptionalAction):
            return super()._format_action_invocation(action)
        first = action.option_strings[0]
        shown = first if first.startswith("--") else ", ".join(
            [first] + [o for o in action.option_strings if o.startswith("--")][:1])  # -h, --help
        if action.nargs == 0:
            return shown
        return f"{shown} {self._format_args(action, self._get_default_metavar_for_optional(action))}"


class DocstringHelpFormatter(argparse.RawDescriptionHelpFormatter, OneSpellingHelpFormatter):
    """:class:`OneSpellingHelpFormatter` for a parser whose description is a script's docstring, kept as written
    (its usage lines and lists)."""


def one_spelling(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add kebab-case and snake_case spellings to every flag of ``parser`` (where they name no other
    flag: ``--Sigma`` and ``--sigma`` stay two flags), show the kebab-case one in the help, and name the
    declared spelling there when it is another (a reference flag); returns ``parser``."""
    taken = parser._option_string_actions
    for action in parser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if not longs or isinstance(action, argparse.BooleanOptionalAction):  # --x/--no-x: spelt as declared
            continue
        for spelling in dict.fromkeys(s for flag in longs for s in (kebab(flag), _snake(flag))):
            if spelling not in taken:
                taken[spelling] = action
                action.option_strings.append(spelling)
        shown = next((o for o in action.option_strings if o.startswith("--") and o == kebab(o)
                      and taken.get(o) is action), longs[0])
        others = [o for o in longs if o != shown and o != _snake(shown)]
        if action.option_strings[0].startswith("--"):  # a short flag (-h) stays first
            action.option_strings.remove(shown)
            action.option_strings.insert(0, shown)
        if others and action.help not in (None, argparse.SUPPRESS):
            action.help = f"{action.help} (also {', '.join(others)})"
    parser.formatter_class = OneSpellingHelpFormatter
    return parser


# The reference's own --backbone names (its trainers' default is RCNet), which this project builds under others.
REFERENCE_BACKBONES = {"RCNet": "its PromptIR with a decoder", "MRCNet": "another network of its model files"}


def backbone_name(value: str) -> str:
    """``--backbone``: one of :data:`net.presets.BACKBONES` (argparse checks the choice); a name of the reference's
    (RCNet, its default) is refused with the nearest network here."""
    if value in REFERENCE_BACKBONES:
        raise argparse.ArgumentTypeError(
            f"{value} is the reference's name for {REFERENCE_BACKBONES[value]}, not built here: pass --backbone "
            f"PromptIR for the PromptIR baseline, BaryPromptIR for BaryIR on PromptIR's backbone, or BaryNet for the "
            f"paper's network (what the authors' commands pass)")
    return value


def at_least(low: int, meaning: str = ""):
    """An argparse type: an integer >= ``low`` (``meaning`` explains the special values in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}{meaning}, got {value}")
        return value
    return parse


def number_above(low: float, meaning: str = ""):
    """An argparse type: a finite number > ``low`` (a rate, a time per step: 0 would divide by zero)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value <= low:
            raise argparse.ArgumentTypeError(f"must be a number > {low:g}{meaning}, got {text}")
        return value
    return parse


def image_side(low: int):
    """An argparse type for the side of the network's input (a bench's ``--size``, ``--patch``): a multiple of 8, at
    least ``low`` (the network runs on it as it is; a side of 12 or 20 failed in its forward)."""
    def parse(text: str) -> int:
        value = at_least(low)(text)
        if value % 8:
            raise argparse.ArgumentTypeError(f"must be a multiple of 8, got {value}")
        return value
    return parse


# The flags that change a preset's network size (None: the preset's value), as net.presets.build_model takes them.
NETWORK_SIZE_FLAGS = ("dim", "num_blocks", "num_refinement_blocks", "heads")


def add_network_size_flags(group, note: str = "") -> None:
    """``--dim``, ``--num-blocks``, ``--num-refinement-blocks``, ``--heads`` in ``group`` (an argparse parser or
    group), the trainers' and the tester's alike; ``note`` ends the help of ``--dim``."""
    group.add_argument("--dim", type=at_least(1), default=None, help=f"override the preset's width{note}")
    group.add_argument("--num-blocks", dest="num_blocks", type=int, nargs=4, default=None, metavar="N",
                       help="override the preset's transformer blocks per level")
    group.add_argument("--num-refinement-blocks", dest="num_refinement_blocks", type=int, default=None, metavar="N",
                       help="override the preset's refinement blocks")
    group.add_argument("--heads", type=int, nargs=4, default=None, metavar="N",
                       help="override the preset's attention heads per level")


def network_size_overrides(args: argparse.Namespace) -> dict:
    """The :data:`NETWORK_SIZE_FLAGS` as given (None: the preset's value), as ``build_model`` takes them."""
    return {name: getattr(args, name, None) for name in NETWORK_SIZE_FLAGS}
