"""What libpng and libjpeg write to the process's C ``stderr`` while OpenCV decodes, taken out of it.

OpenCV leaves both libraries' default message handlers in place, so a damaged file makes them print
lines of their own ("libpng error: IDAT: CRC error", "Corrupt JPEG data: premature end of data
segment") beside the one ``error:`` line the project prints about the file; in a data loader worker
those lines land in the middle of the trainer's output. And libjpeg only *warns* of damaged data: the
image decodes, its damaged part filled with grey, and would be trained on or scored in silence.

:func:`decoder_messages` sends file descriptor 2 to a scratch file for the length of one decode and
sorts what arrived there:

- a libpng or libjpeg line that says the data is damaged is returned, to become the detail of the
  :class:`~utils.data.image_io.ImageReadError` about the file;
- libpng's warnings (an sRGB profile it knows to be wrong, extra data after the image) and libjpeg's
  "extraneous bytes before marker" (stray bytes that it, and Pillow, pass over) are harmless and dropped;
- anything else (another thread writing to stderr meanwhile, a message of another kind) is written on
  to the real stderr, so nothing is lost.

Decodes that capture take turns (one file descriptor 2 per process); loader workers are processes of
their own and do not wait for each other.
"""
from __future__ import annotations

import os
import tempfile
import threading
from contextlib import contextmanager
from typing import Iterator

_DAMAGED = ("libpng error:", "Corrupt JPEG data:", "Premature end of JPEG file")
_HARMLESS = ("libpng warning:",)
_HARMLESS_JPEG = "extraneous bytes before marker"


def sort_lines(text: str) -> tuple[list[str], str]:
    """``(damage, other)`` of the text a decode wrote: the lines saying the data is damaged (stripped), and
    the text to pass on to stderr (harmless decoder warnings taken out)."""
    damage, other = [], []
    for line in text.splitlines(keepends=True):
        said = line.strip()
        if said.startswith(_DAMAGED) and _HARMLESS_JPEG not in said:
            damage.append(said)
        elif not (said.startswith(_HARMLESS) or (said.startswith("Corrupt JPEG data:") and _HARMLESS_JPEG in said)):
            other.append(line)
    return damage, "".join(other)


class _Capture:
    """File descriptor 2 sent to a scratch file of this process while a decode runs (see the module)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: int | None = None  # the process the scratch file belongs to: a forked worker makes its own
        self.scratch: int | None = None

    def _scratch(self) -> int:
        if self.owner != os.getpid():  # after a fork the parent's file (and its offset) would be shared
            fd, name = tempfile.mkstemp(prefix="decoder-messages-")
            os.unlink(name)
            self.owner, self.scratch = os.getpid(), fd
        return self.scratch

    @contextmanager
    def __call__(self) -> Iterator[list[str]]:
        with self.lock:
            try:
                scratch = self._scratch()
                saved = os.dup(2)
            except OSError:  # no stderr to take over (a closed descriptor), or no temporary folder
                yield []
                return
            damage: list[str] = []
            os.ftruncate(scratch, 0)
            os.lseek(scratch, 0, os.SEEK_SET)
            os.dup2(scratch, 2)
            try:
                yield damage
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                written = os.lseek(scratch, 0, os.SEEK_CUR)
                if written:
                    os.lseek(scratch, 0, os.SEEK_SET)
                    chunks, left = [], written
                    while left > 0 and (chunk := os.read(scratch, left)):
                        chunks.append(chunk)
                        left -= len(chunk)
                    found, other = sort_lines(b"".join(chunks).decode("utf-8", "replace"))
                    damage += found
                    if other:
                        os.write(2, other.encode())


decoder_messages = _Capture()
"""``with decoder_messages() as damage:`` around a decode; afterwards ``damage`` holds the decoders' lines
saying the data is damaged (empty for a sound file)."""
