"""What libpng and libjpeg write to the process's C ``stderr`` while OpenCV decodes, taken out of it.

OpenCV leaves both libraries' default message handlers in place, so they print lines of their own
("libpng error: IDAT: CRC error", "Corrupt JPEG data: premature end of data segment") that name no
file, beside the one ``error:`` line the project prints about it; in a data loader worker those lines
land in the middle of the trainer's output.

:func:`decoder_messages` sends file descriptor 2 to a scratch file for the length of one decode
(:data:`utils.streams.descriptor_2`) and sorts what arrived there (:func:`sort_text`):

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

import re
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from utils.streams import descriptor_2

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


class _DecoderMessages:
    """The decoders' lines taken out of stderr around a decode (:data:`utils.streams.descriptor_2`, see the module),
    and each file's warning said once per process."""

    def __init__(self):
        self.warned: set[str] = set()  # files whose libjpeg warning was said, in this process

    def warn_once(self, path: str, text: str) -> None:
        """Print ``text`` (a warning about ``path``) on stderr the first time only, in this process; in the
        captures' turn, so that no decode running in another thread captures it as its own decoder's words."""
        with descriptor_2.lock:
            if path in self.warned:
                return
            if len(self.warned) < 100_000:
                self.warned.add(path)
            print(text, file=sys.stderr, flush=True)

    @contextmanager
    def __call__(self) -> Iterator[DecoderSaid]:
        said = DecoderSaid()
        with descriptor_2(lambda text: sort_text(text, said)):
            yield said


decoder_messages = _DecoderMessages()
"""``with decoder_messages() as said:`` around a decode; afterwards ``said`` (:class:`DecoderSaid`) holds what
the decoders said (empty lists for a sound file); ``decoder_messages.warn_once(path, text)`` says a file's
warning."""
