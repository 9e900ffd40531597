"""What every error message of the project shares.

* :class:`UserError`: the base of every failure the user fixes (a bad flag, file or checkpoint); its
  message is the whole story: what went wrong, where, and the fix.
* :func:`failure_message`: one line for a failure the user can act on (a :class:`UserError`, a full
  disk, a read-only folder, memory), ``None`` for a bug (which keeps its traceback).
* :func:`stopped_while_starting`: Ctrl-C while a script imports torch is one line too.
* :func:`run_main`: how both scripts end: one ``error:`` line and a non-zero exit status, the traceback
  only with ``--debug``.
* :class:`OneLineArgumentParser`: a bad flag is one ``error:`` line too (a path starting with '-' read as a
  flag says so, and ``./-name``); :func:`add_debug_flag`: the way back to the traceback.
* :func:`listing`: long lists cut to a readable length; :func:`human_bytes`: sizes as people read them;
  :func:`counted`: a count and its noun, singular for one.
* :func:`child_failure`: what a failed child process (a benchmark's measurement) said, for its parent's line.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import os
import re
import signal
import sys
import unicodedata
from typing import Any, Callable, Iterable

from utils.streams import PIPE_CLOSED_STATUS, OutputClosed, OutputGuard, leave_the_hung_up_terminal

LIST_LIMIT = 10
INTERRUPTED_STATUS = 130  # the shell's status for a process stopped by Ctrl-C (128 + SIGINT)


class UserError(Exception):
    """A failure the user fixes; the message names the file or flag and the fix.

    ``exit_status`` is what the script exits with: 2 for a command line that cannot work, 1 otherwise.
    """
    exit_status = 1


class UsageError(UserError):
    """Flags that cannot work (alone, together, or on this machine): exit status 2, as argparse's errors."""
    exit_status = 2


def add_debug_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """``--debug``: a failure keeps its whole traceback instead of becoming one ``error:`` line (:func:`run_main`)."""
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of a failure instead of one error: line")


class OneLineArgumentParser(argparse.ArgumentParser):
    """An argument parser whose errors are one ``error:`` line (exit status 2), like every other failure
    of the scripts, instead of the usage block followed by ``<prog>: error: ...``."""

    _argv: list[str] = []

    def parse_known_args(self, args=None, namespace=None):
        self._argv = [str(a) for a in (sys.argv[1:] if args is None else args)]  # for error()'s hint
        self._refuse_repeated_lists()
        return super().parse_known_args(args, namespace)

    def _refuse_repeated_lists(self) -> None:
        """A flag taking several values given twice (``--de-type derain dehaze --de_type deblur lowlight``, as when
        a flag is added to the authors' command that already has it): argparse keeps the last, and the first
        values would be lost without a word; it is an error naming both, with the one flag that means both."""
        given: dict[int, list[list[str]]] = {}
        action, values = None, []
        for token in [*self._argv, "--"]:
            if token.startswith("-") and not _is_number(token):
                if action is not None:
                    given.setdefault(id(action), []).append(values)
                if token == "--":
                    break
                found = self._action_named(token.split("=", 1)[0])
                takes_many = found is not None and (found.nargs in ("+", "*") or
                                                    (isinstance(found.nargs, int) and found.nargs > 1))
                action, values = (found, token.split("=", 1)[1:]) if takes_many else (None, [])
            elif action is not None:
                values.append(token)
        for flag in self._actions:
            uses = [v for v in given.get(id(flag), []) if v]  # one without values: argparse's own error says it
            if len(uses) > 1:
                name = next((o for o in flag.option_strings if o.startswith("--")), flag.option_strings[0])
                shown = "; ".join(f"{name} {' '.join(v)}" for v in uses)
                self.error(f"{name} was given {len(uses)} times ({shown}), and only the last would count: give it "
                           f"once with every value, {name} {' '.join(v for vs in uses for v in vs)}")

    def _get_option_tuples(self, option_string):
        """argparse's matches of an abbreviated flag, one per flag: the spellings :func:`utils.cli.one_spelling`
        adds are the same flag, so ``--batch`` means ``--batchSize`` as it does in the reference's parser, not an
        "ambiguous option" among ``--batchSize, --batch_size, --batch-size``."""
        seen: set[int] = set()
        matches = []
        for match in super()._get_option_tuples(option_string):
            if id(match[0]) not in seen:
                seen.add(id(match[0]))
                matches.append(match)
        return matches

    def _action_named(self, option: str) -> argparse.Action | None:
        """The action ``option`` names as argparse reads it: by its exact spelling, or by an unambiguous
        beginning of one (``--de-typ`` for ``--de-type``, when abbreviations are allowed)."""
        if option in self._option_string_actions:
            return self._option_string_actions[option]
        if not self.allow_abbrev or not option.startswith("--"):
            return None
        found = {id(a): a for o, a in self._option_string_actions.items() if o.startswith(option)}
        return next(iter(found.values())) if len(found) == 1 else None

    def error(self, message: str):
        # A flag with several spellings (utils/cli.py) is named by the first, the one --help shows.
        message = re.sub(r"argument (-[\w-]+)(?:/-[\w-]+)+", r"argument \1", message)
        message += self._dash_hint(message) + self._switch_value_hint(message)
        self.exit(2, f"error: {message} (see {self.prog} --help)\n" if said_by_this_rank() else None)

    def _switch_value_hint(self, message: str) -> str:
        """For a value given to an on/off switch (``--cuda True`` or ``--cuda=True``: the reference trainers' --cuda
        takes a value), that the flag takes none, and how to write it."""
        m = re.match(r"argument (--[\w-]+): ignored explicit argument", message)
        switch = m.group(1) if m else None
        if message.startswith("unrecognized arguments: "):
            first = message[len("unrecognized arguments: "):].split(" ", 1)[0]
            for k, token in enumerate(self._argv[1:], 1):
                before = self._action_named(self._argv[k - 1])
                if token == first and before is not None and before.nargs == 0 and before.option_strings and \
                        self._argv[k - 1].startswith("--"):
                    switch = self._argv[k - 1]
                    break
        if switch is None or self._action_named(switch) is None:
            return ""
        return f"; {switch} is a switch and takes no value: give {switch} alone to turn it on, or leave it out"

    def _dash_hint(self, message: str) -> str:
        """For "--save: expected one argument" where the value given starts with '-' (``--save -out``, a folder
        called ``-out``): that it was read as a flag, and how to write it."""
        m = re.match(r"argument (-[\w-]+)(?:/-[\w-]+)*: expected (?:one|at least one) argument", message)
        action = self._option_string_actions.get(m.group(1)) if m else None
        if action is None:
            return ""
        for k, token in enumerate(self._argv[:-1]):
            value = self._argv[k + 1]
            if token in action.option_strings and value.startswith("-") and \
                    value.split("=", 1)[0] not in self._option_string_actions:
                return f"; {value} starts with '-' and is read as a flag: for a path write ./{value}"
        return ""


def _is_number(token: str) -> bool:
    """Whether ``token`` is a negative number (a value such as ``-1``, not a flag)."""
    try:
        float(token)
        return True
    except ValueError:
        return False


def said_by_this_rank() -> bool:
    """Whether this process prints what every process of a torchrun group on one machine would print alike (a
    bad flag, the same missing folder): a process on its own, rank 0, or a rank on another node than rank 0's
    (its files, devices and command line are its own, so its failure may be too). Read from torchrun's
    environment (``TORCHELASTIC_RUN_ID``, ``RANK``, ``GROUP_RANK``: the node's rank), so it holds before the
    process group exists too, and a job script that exports RANK for another tool silences nothing."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return True
    return os.environ.get("RANK", "0") == "0" or os.environ.get("GROUP_RANK", "0") != "0"


ITEM_LIMIT = 1000  # characters of one listed item (a crafted checkpoint's key of millions made a 30 MB error line)


def listing(items: Iterable, limit: int = LIST_LIMIT, sep: str = "; ", lead: str = " ") -> str:
    """``items`` as text for an error message, on its one line: the first ``limit``, then '... and N more'.

    Items are joined by ``sep``; the whole starts with ``lead`` (a message ending in ``:`` continues
    with the list). An item longer than :data:`ITEM_LIMIT` characters is cut, saying how long it was.
    """
    items = list(items)
    shown = [str(i) for i in items[:limit]]
    shown = [t if len(t) <= ITEM_LIMIT else f"{t[:ITEM_LIMIT]}... ({len(t):,} characters)" for t in shown]
    more = f"{sep}... and {len(items) - limit} more" if len(items) > limit else ""
    return lead + sep.join(shown) + more


def table_cell(name: str) -> str:
    """A file or row name as one Markdown table cell: a ``|`` in it (a legal file name character) is escaped, or
    it would end the cell and shift every value after it under the next heading; so is a backslash (``x\\|y.png``
    gave ``x\\\\|y.png``, an escaped backslash and then a bar ending the cell), and Markdown's inline syntax
    (:func:`markdown_literal`); a line break or other control character (legal in a Linux name), which cut the row
    in two, is shown as its escape (``\\n``, ``\\x1b``)."""
    text = markdown_literal(name).replace("|", "\\|")
    return "".join("\\" + ch.encode("unicode_escape").decode("ascii") if _breaks_line(ch) else ch for ch in text)


_MARKDOWN_INLINE = frozenset("\\*`[]<~$")  # escapes, emphasis, code, links, HTML, strikethrough, GitHub's math
_ENTITY = re.compile(r"&(?:#[0-9]{1,7}|#[xX][0-9a-fA-F]{1,6}|[A-Za-z][A-Za-z0-9]{1,31});")


def markdown_literal(text: str) -> str:
    """``text`` as a Markdown viewer shows it as written: a name ``*x*_.png`` read *x* in italics, ``[a](b).png`` a
    link, ``<b>`` bold. Backslash-escaped (CommonMark escapes any ASCII punctuation): a backslash, ``* ` [ ] < ~ $``,
    an ``&`` that starts an entity (``&amp;``), and an ``_`` other than between letters or digits (``rain_1.png``,
    ``denoise_25``: no emphasis starts there, and they stay as they are)."""
    out = []
    for i, ch in enumerate(text):
        inert_underscore = ch == "_" and 0 < i < len(text) - 1 and text[i - 1].isalnum() and text[i + 1].isalnum()
        if ch in _MARKDOWN_INLINE or (ch == "_" and not inert_underscore) or (ch == "&" and _ENTITY.match(text, i)):
            out.append("\\")
        out.append(ch)
    return "".join(out)


def _breaks_line(ch: str) -> bool:
    """Whether ``ch`` is a control character, or one that :meth:`str.splitlines` ends a line at."""
    return unicodedata.category(ch) == "Cc" or ch in "\u2028\u2029"


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` and ``noun``, singular for one: ``'1 seed'``, ``'3 seeds'``, ``'1,203 clean images'`` (``plural``: when
    not ``noun + 's'``)."""
    return f"{n:,} {one_or_many(n, noun, plural or noun + 's')}"


def one_or_many(n: int, one: str, many: str) -> str:
    """``one`` for a count of 1, else ``many``: the verb after :func:`counted` (``'is'``/``'are'``)."""
    return one if n == 1 else many


def human_bytes(n: float) -> str:
    """``n`` bytes as ``'1.5 GiB'``."""
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.1f} {unit}"
        n /= 1024
    return f"{n} bytes"


def child_failure(stderr: str, status: int) -> str:
    """What a child process that exited with ``status`` said on ``stderr``: its ``error:`` line without the
    prefix, or a bug's last traceback line (the traceback itself is printed to this process's stderr first, so
    that it is not lost), then the exit status: for the parent's own :class:`UserError`."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    if len(lines) > 1:
        print(stderr[-4000:], file=sys.stderr, end="" if stderr.endswith("\n") else "\n", flush=True)
    detail = lines[-1].removeprefix("error: ") if lines else "no output"
    return f"{detail} (exit status {status})"


def exception_chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or during, outermost first (cycles cut)."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        seen.append(exc)
        exc = exc.__cause__ or exc.__context__
    return seen


def file_too_large(what: str) -> str:
    """The words for EFBIG: ``what`` (a file, or ``writing NAME to FOLDER``) passed the largest file allowed."""
    return (f"file too large: {what} exceeds the largest file allowed there (the file system's limit, e.g. 4 GiB on "
            f"FAT32, or this process's, ulimit -f); choose another folder or raise the limit")


def _os_message(exc: OSError) -> str | None:
    where = exc.filename if exc.filename is not None else "a file"
    if exc.errno == errno.ENOSPC or exc.errno == errno.EDQUOT:
        return f"disk full while writing {where}: free space on that file system or choose another folder"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied: {where} — choose a folder you can write to, or fix its permissions"
    if exc.errno == errno.EROFS:
        return f"read-only file system: {where} — choose a writable folder"
    if exc.errno == errno.ENOENT:
        return f"no such file or folder: {where}"
    if exc.errno == errno.EISDIR:
        return f"{where} is a folder where a file was expected"
    if exc.errno == errno.ENOTDIR:
        return f"{where}: a path component is a file, not a folder"
    if exc.errno == errno.EFBIG:
        return file_too_large(where)
    if exc.errno == errno.ENAMETOOLONG:
        return f"file name too long: {where} — shorten it (most file systems allow 255 bytes a name)"
    return None


def _worker_message(message: str) -> str:
    """The original message of an error re-raised by a DataLoader ("Caught X in DataLoader worker process
    0. Original Traceback ...", whose last line is ``module.X: message``); other messages unchanged."""
    if not (message.startswith("Caught ") and "Original Traceback" in message):
        return message
    last = [line for line in message.strip().splitlines() if line.strip()][-1]
    head, sep, rest = last.partition(": ")
    return rest if sep and " " not in head else last


class StopSignal(KeyboardInterrupt):
    """SIGTERM (``kill``, ``timeout``, a scheduler) or SIGHUP (a closed terminal) raised where Ctrl-C raises
    KeyboardInterrupt (:func:`utils.runtime.stop_signals_as_interrupt`), so that what keeps the work done so far
    on Ctrl-C keeps it here too; ``signum`` names the signal in the closing line and the exit status."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


# A script's exit statuses when Ctrl-C, SIGTERM or SIGHUP stopped it (:func:`interrupted_line`): 128 + the signal.
STOPPED_STATUSES = frozenset(128 + s for s in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", signal.SIGINT)))


def interrupted_line(exc: KeyboardInterrupt) -> tuple[str, int]:
    """The message and the shell's exit status (128 + the signal's number) of a run stopped from outside:
    ``("interrupted", 130)`` for Ctrl-C, ``("stopped by SIGTERM", 143)`` for a :class:`StopSignal` of SIGTERM."""
    signum = getattr(exc, "signum", signal.SIGINT)
    if signum == signal.SIGINT:
        return "interrupted", INTERRUPTED_STATUS
    return f"stopped by {signal.Signals(signum).name}", 128 + signum


def failure_message(exc: BaseException) -> tuple[str, int] | None:
    """``(message, exit status)`` for a failure the user can act on; ``None`` for anything else (a bug).

    The whole chain is searched, so a full disk reported by PyTorch as ``RuntimeError: ... unexpected
    pos`` (raised while handling the ``OSError``) still reads as a full disk.
    """
    chain = exception_chain(exc)
    for e in chain:
        if isinstance(e, UserError):
            return _worker_message(str(e)), e.exit_status
    for e in chain:
        if isinstance(e, OSError) and not isinstance(e, UserError):
            message = _os_message(e)
            if message:
                return message, 1
    for e in chain:
        if _lost_peer(e):
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            return (f"another process of this torchrun group stopped, and this one lost its connection to it "
                    f"({detail}); that process's own error: line says why (a process killed outright, e.g. out "
                    f"of host memory, says nothing). The checkpoints already saved and latest are as they were: "
                    f"fix the cause, then continue with --resume auto", 1)
    if isinstance(exc, KeyboardInterrupt):
        return interrupted_line(exc)
    if any(isinstance(e, MemoryError) for e in chain):
        return ("out of memory: train with a smaller --batch-size or --patch-size; restore large images with "
                "--tile", 1)
    if isinstance(exc, RecursionError):
        return "a file nests structures too deeply to read (maximum recursion depth exceeded)", 1
    for e in chain:
        if type(e).__module__ == "cv2" and type(e).__name__ == "error":  # OpenCV, without importing it here
            detail = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown OpenCV error"
            return f"OpenCV failed: {detail}", 1
    return None


# What gloo and NCCL say when the process at the other end of a collective is gone (killed, or ended by its own
# error): torch raises them as a plain RuntimeError (gloo) or one of torch.distributed's DistError kinds.
_LOST_PEER = re.compile(r"Connection (?:reset|closed) by peer|gloo/transport/.*(?:Read|Write) error|"
                        r"NCCL communicator was aborted|remote process exited or there was a network error")


def _lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank of the group is gone (see :data:`_LOST_PEER`);
    the store's own errors (a rank that never joined) are not."""
    if type(e).__module__.startswith("torch") and type(e).__name__ == "DistNetworkError":
        return True
    return isinstance(e, RuntimeError) and bool(_LOST_PEER.search(str(e)))  # a backend error of its own: a bug


_STARTING_STOPPED = "error: interrupted while starting; nothing was written"


def _stopped_while_starting_line(signum: int) -> tuple[str, int]:
    """The line and exit status for ``signum`` (SIGINT: Ctrl-C; SIGTERM: kill, timeout, a scheduler; SIGHUP: a
    closed terminal) while a script starts: the shell's 128 + signal number."""
    if signum == signal.SIGINT:
        return _STARTING_STOPPED, INTERRUPTED_STATUS
    return f"error: stopped by {signal.Signals(signum).name} while starting; nothing was written", 128 + signum


def _say_stopped_while_starting(signum: int) -> int:
    """Print the line of ``signum`` while starting (:func:`_stopped_while_starting_line`), once per torchrun group's
    machine: Ctrl-C and a scheduler's SIGTERM reach every rank alike (torchrun passes its own on), and rank 0
    says it for all (:func:`said_by_this_rank`). Returns the exit status."""
    if signum == getattr(signal, "SIGHUP", None):  # the line goes where stderr is not the closed terminal
        leave_the_hung_up_terminal()
    line, status = _stopped_while_starting_line(signum)
    if said_by_this_rank():
        print(line, file=sys.stderr, flush=True)
    return status


@contextlib.contextmanager
def stopped_while_starting():
    """Around a script's imports (torch takes seconds to load): Ctrl-C (or SIGTERM: ``kill``, ``timeout``, a job
    scheduler; or SIGHUP: a closed terminal) there ends the script with one line and the shell's status (130,
    143, 129) instead of a traceback through the import machinery, or, for SIGTERM and SIGHUP, an exit without a
    word. Nothing has started yet, so nothing is lost.

    The signal is held until the imports end rather than raised where it lands: a KeyboardInterrupt inside an
    import left numpy or scikit-image half loaded (the next name looked up in it raised RecursionError or
    ImportError, printed as a traceback) or crossed torch's C++ (``terminate called``, a core dump). A second
    Ctrl-C ends the process at once, with the same line. A signal this process ignores (``nohup``, a
    background job's SIGINT) stays ignored, and one with a handler of its own keeps it."""
    interrupted: list[int] = []

    def hold(signum, frame):
        if signum == signal.SIGINT and signal.SIGINT in interrupted:  # the second Ctrl-C: do not wait for imports
            os._exit(_say_stopped_while_starting(signal.SIGINT))
        interrupted.append(signum)

    held = []
    hangup = getattr(signal, "SIGHUP", None)  # POSIX
    stops = [(signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, signal.SIG_DFL)]
    try:
        for s, default in stops + ([(hangup, signal.SIG_DFL)] if hangup is not None else []):
            if signal.getsignal(s) is default:
                signal.signal(s, hold)
                held.append((s, default))
    except ValueError:  # not the main thread: signals go to the main thread anyway
        pass
    try:
        yield
    except BaseException as exc:
        if interrupted or any(isinstance(e, KeyboardInterrupt) for e in exception_chain(exc)):
            sys.exit(_say_stopped_while_starting(interrupted[0] if interrupted else signal.SIGINT))
        raise
    finally:
        for s, default in held:
            signal.signal(s, default)
    if interrupted:
        sys.exit(_say_stopped_while_starting(interrupted[0]))


def run_main(main: Callable[[Any], Any], args: Any, debug: bool = False,
             quiet: Callable[[BaseException], bool] | None = None) -> int:
    """``main(args)``'s exit status (0 when it returns nothing); a failure the user can act on becomes
    one ``error:`` line on stderr and its exit status. With ``debug`` every failure keeps its traceback;
    a failure that is not the user's (a bug) always does. A failure ``quiet`` holds true for only sets the
    exit status: another process says it (torchrun's rank 0, of a failure every rank meets alike). Output
    whose pipe's reader has gone (:class:`OutputGuard`) ends it quietly, with :data:`PIPE_CLOSED_STATUS`; so
    does a run that went on past it (the trainer stops with a checkpoint) and would otherwise end with 0."""
    streams = {name: getattr(sys, name) for name in ("stdout", "stderr") if getattr(sys, name) is not None}
    guards = {name: OutputGuard(stream, _output_closed) for name, stream in streams.items()}
    for name, guard in guards.items():
        setattr(sys, name, guard)
    try:
        status = main(args)
        for name in streams:  # what is still buffered meets a closed pipe here, not in Python's exit ("Exception
            getattr(sys, name).flush()  # ignored ... BrokenPipeError", status 120)
        if any(guard.broken for guard in guards.values()) and not status:  # a closed pipe the run went on past (a
            return PIPE_CLOSED_STATUS  # trainer's stop with a checkpoint; a library that swallowed the error)
    except SystemExit:
        raise
    except BaseException as exc:
        if _from_closed_output(exc):
            return PIPE_CLOSED_STATUS
        found = None if debug else failure_message(exc)
        if found is None:
            raise
        message, status = found
        if quiet is not None and quiet(exc):
            return status
        one_line = " ".join(part.strip() for part in message.splitlines() if part.strip())  # a library's text too
        try:
            print(f"error: {one_line}", file=sys.stderr)
        except OutputClosed:
            return PIPE_CLOSED_STATUS
        return status
    finally:
        for name, stream in streams.items():
            try:  # a failure's end too: what is still buffered goes now (to /dev/null if the reader has gone), not
                guards[name].flush()  # in Python's exit ("Exception ignored ... BrokenPipeError", status 120)
            except (OSError, ValueError):  # the failure's own status and line stand
                pass
            setattr(sys, name, stream)
    return status if isinstance(status, int) else 0


def _from_closed_output(exc: BaseException) -> bool:
    """Whether ``exc`` is :class:`OutputClosed` or was raised from one (``raise ... from``: the tester's
    partial-results stop). A failure met while one was being handled has it only as its context: that failure is
    the script's own (a results file it could not write, a bug), and is said like any other."""
    seen: list[BaseException] = []
    while exc is not None and not any(exc is s for s in seen):
        if isinstance(exc, OutputClosed):
            return True
        seen.append(exc)
        exc = exc.__cause__
    return False


def _output_closed() -> None:
    raise OutputClosed("the output's reader has gone")
