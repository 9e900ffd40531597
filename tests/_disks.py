"""A disk that fills up in the middle of a write, for the tests of what a full disk leaves behind."""
import builtins
import errno


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
