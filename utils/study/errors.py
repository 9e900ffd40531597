"""The study's errors: each is one ``error:`` line (:func:`utils.errors.run_main`) that says what to do."""
from __future__ import annotations

from utils.errors import INTERRUPTED_STATUS, UsageError, UserError


class StudyError(UserError):
    """A setting conflicts with what ``--out`` already holds, or a run failed; the message says what to do."""


class StudySettingError(StudyError, UsageError):
    """Flags that cannot work together (exit status 2)."""


class StudyInterrupted(StudyError):
    """Ctrl-C (or a signal) during the runs: the shell's status for it, and how to continue."""
    exit_status = INTERRUPTED_STATUS
