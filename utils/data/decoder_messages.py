"""What libpng and libjpeg write to the process's C ``stderr`` while OpenCV decodes, taken out of it.

OpenCV leaves both libraries' default message handlers in place, so they print lines of their own
("libpng error: IDAT: CRC error", "Corrupt JPEG data: premature end of data segment") that name no
file, beside the one ``error:`` line the project prints about it; in a data loader worker those lines
land in the middle of the trainer's output.

:func:`decoder_messages` sends file descriptor 2 to a scratch file for the length of one decode and
sorts what arrived there (:func:`sort_text`):

- **libpng errors**, and libjpeg's "Premature end of JPEG file" (a file cut short, which Pillow, the
  reference's reader, refuses too): the file is refused, with these words as the detail of the
  :class:`~utils.data.image_io.ImageReadError` about it;
- **libpng warnings** (an sRGB profile it knows to be wrong, a bad CRC in a text chunk, extra data after
  the image) leave the pixels as they are: dropped;
- **libjpeg warnings**: libjpeg decodes on through damage ("premature end of data segment", "bad
  Huffman code", "N extraneous bytes before marker"), filling what it lost with grey, and Pillow, which
  the reference reads with, does the same in silence. Such an image is read, as the reference reads
  it, and the caller says so once per file, with the file's name and libjpeg's words. libjpeg prints
  only the first warning of an image, so the words may be a harmless one that hides damage further on;
- anything else (another thread writing to stderr meanwhile) is written on to the real stderr, so
  nothing is lost; a decoder's words glued to the end of another thread's unfinished line are found
  there too.

Decodes that capture take turns (one file descriptor 2 per process); loader workers are processes of
their own and do not wait for each other. A process forked while another thread decodes starts with
its real stderr, the turn free and a scratch file of its own.
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

_LIBPNG_ERROR = "libpng error: "
_LIBPNG_WARNING = "libpng warning: "
_TRUNCATED_JPEG = "Premature end of JPEG file"  # a cut file: Pillow (the reference) refuses it, and so does this
_LIBJPEG = ("Corrupt JPEG data", "Warning: unknown JFIF revision number",
            "Invalid SOS parameters for sequential JPEG", "Inconsistent progression sequence",
            "Unknown Adobe color transform code", "Application transferred too many scanlines")
_DECODER = re.compile("|".join(re.escape(p) for p in (_LIBPNG_ERROR, _LIBPNG_WARNING, _TRUNCATED_JPEG, *_LIBJPEG)))


@dataclass
class DecoderSaid:
    """What the decoders said during one decode: errors (libpng's: the decode failed; libjpeg's truncation) and
    libjpeg's warnings (the image decoded, perhaps over damage), each a stripped line."""
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def sort_text(text: str, said: DecoderSaid) -> str:
    """Add the decoders' lines in ``text`` to ``said``; returns the rest, to pass on to stderr."""
    other = []
    for line in text.splitlines(keepends=True):
        found = _DECODER.search(line)
        if found is None:
            other.append(line)
            continue
        other.append(line[:found.start()])  # another thread's unfinished line, the decoder's words after it
        words = line[found.start():].strip()
        if words.startswith((_LIBPNG_ERROR, _TRUNCATED_JPEG)):
            said.errors.append(words)
        elif not words.startswith(_LIBPNG_WARNING):
            said.warnings.append(words)
    return "".join(other)


def _write_all(fd: int, data: bytes) -> None:
    """Write ``data`` to ``fd`` whole; a stderr nobody reads any more (a closed pipe) is not an error here."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


class _Capture:
    """File descriptor 2 sent to a scratch file of this process while a decode runs (see the module)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.owner: int | None = None  # the process the scratch file belongs to
        self.scratch: int | None = None
        self.saved: int | None = None  # the real stderr, while a decode captures
        self.warned: set[str] = set()  # files whose libjpeg warning was said, in this process
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forked)

    def _forked(self) -> None:
        """In a child forked while another thread decoded: the real stderr back on descriptor 2, the parent's
        scratch file (and its offset) left to the parent, and the turn free."""
        if self.saved is not None:
            os.dup2(self.saved, 2)
            os.close(self.saved)
        if self.scratch is not None:
            os.close(self.scratch)
        self.lock = threading.Lock()
        self.owner = self.scratch = self.saved = None

    def _scratch(self) -> int:
        if self.owner != os.getpid():
            fd, name = tempfile.mkstemp(prefix="decoder-messages-")
            os.unlink(name)
            self.owner, self.scratch = os.getpid(), fd
        return self.scratch

    def warn_once(self, path: str, text: str) -> None:
        """Print ``text`` (a warning about ``path``) on stderr the first time only, in this process; under the
        lock, so that no decode running in another thread captures it as its own decoder's words."""
        with self.lock:
            if path in self.warned:
                return
            if len(self.warned) < 100_000:
                self.warned.add(path)
            print(text, file=sys.stderr, flush=True)

    def _start(self) -> int | None:
        """Descriptor 2 to the emptied scratch file; returns the real stderr's copy (None: not captured, as
        when there is no stderr to take over or no temporary folder)."""
        try:
            scratch = self._scratch()
            os.ftruncate(scratch, 0)
            os.lseek(scratch, 0, os.SEEK_SET)
            saved = os.dup(2)
        except OSError:
            return None
        try:
            os.dup2(scratch, 2)
        except OSError:
            os.close(saved)
            return None
        return saved

    def _finish(self, saved: int, said: DecoderSaid) -> None:
        """The real stderr back on descriptor 2; what arrived meanwhile sorted into ``said`` or passed on."""
        os.dup2(saved, 2)
        os.close(saved)
        scratch = self.scratch
        written = os.lseek(scratch, 0, os.SEEK_CUR)
        if not written:
            return
        os.lseek(scratch, 0, os.SEEK_SET)
        chunks, left = [], written
        while left > 0 and (chunk := os.read(scratch, left)):
            chunks.append(chunk)
            left -= len(chunk)
        other = sort_text(b"".join(chunks).decode("utf-8", "surrogateescape"), said)
        if other:
            _write_all(2, other.encode("utf-8", "surrogateescape"))

    @contextmanager
    def __call__(self) -> Iterator[DecoderSaid]:
        said = DecoderSaid()
        with self.lock:
            self.saved = self._start()
            try:
                yield said
            finally:
                saved, self.saved = self.saved, None
                if saved is not None:
                    self._finish(saved, said)


decoder_messages = _Capture()
"""``with decoder_messages() as said:`` around a decode; afterwards ``said`` (:class:`DecoderSaid`) holds what
the decoders said (empty lists for a sound file); ``decoder_messages.warn_once(path, text)`` says a file's
warning."""
