"""A disk that fills up in the middle of a write, and a figure whose save is cut short, for the tests of what
a failed write leaves behind."""
import builtins
import errno
import os
from pathlib import Path


class FileWrapper:
    """A file object that stands in for ``fh``: what a subclass does not override goes to ``fh``."""

    def __init__(self, fh):
        self.fh = fh

    def __getattr__(self, name):
        return getattr(self.fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()


class FillingDisk:
    """A disk that fills up in the middle of a record: writing one that holds ``marker`` lands its first ``room``
    bytes and then fails with ENOSPC, through ``os.write`` and through a file object alike."""

    def __init__(self, monkeypatch, module, marker: bytes, room: int = 20):
        self.marker, self.room, self.error = marker, room, OSError(errno.ENOSPC, "No space left on device")
        real_write, real_open = module.os.write, builtins.open
        disk = self

        def holds(data) -> bool:
            return disk.marker in (data.encode() if isinstance(data, str) else bytes(data))

        def write(fd, data):
            if holds(data):
                real_write(fd, bytes(data)[:disk.room])
                raise disk.error
            return real_write(fd, data)

        class Filling(FileWrapper):
            def write(self, data):
                if holds(data):
                    self.fh.write(data[:disk.room])
                    self.fh.flush()
                    raise disk.error
                return self.fh.write(data)

        monkeypatch.setattr(module.os, "write", write)
        monkeypatch.setattr(module, "open", lambda *a, **k: Filling(real_open(*a, **k)), raising=False)


def tear_figure_saves(monkeypatch) -> None:
    """Every matplotlib ``savefig`` from now on writes half a PNG to its file, then Ctrl-C stops it."""
    import matplotlib.figure

    def torn_savefig(self, fname, **kw):
        if isinstance(fname, (str, os.PathLike)):
            Path(fname).write_bytes(b"half a PNG")
        else:
            fname.write(b"half a PNG")
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", torn_savefig)
