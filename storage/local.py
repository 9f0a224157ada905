"""The embedded default store: a directory on local disk (``./.keel``)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO

from keel.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from keel.storage.base import check_key


class LocalStore:
    """Objects as files. Writes go to a temporary file first, then replace the target,
    so a crash mid-write leaves either the old object or the new one, never a mix."""

    def __init__(self, root: str | os.PathLike[str], *, fsync: bool = True) -> None:
        self.root = Path(root).expanduser().resolve()
        self.fsync = fsync

    @property
    def url(self) -> str:
        return str(self.root)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def put(self, key: str, data: bytes) -> None:
        """Write a temporary file, then rename it over the target: a crash mid-write
        leaves the old object or the new one, never a mix."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    self._write(fh, data)
                os.replace(tmp, path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            self._sync_dir(path.parent)
        except OSError as exc:
            raise StorageError(f"cannot write {key} under {self.root}: {exc}", key=key) from exc

    def create(self, key: str, data: bytes) -> None:
        """An exclusive create (``O_EXCL``) at the final name. A crash mid-write leaves a
        torn object there, which readers detect by its sealed size and checksum and the
        run's next writer moves aside (see ``RunStore.quarantine``)."""
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise ObjectExistsError(f"object {key} already exists", key=key) from None
        except OSError as exc:
            raise StorageError(f"cannot create {key} under {self.root}: {exc}", key=key) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                self._write(fh, data)
            self._sync_dir(path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                path.unlink()
            raise StorageError(f"cannot write {key} under {self.root}: {exc}", key=key) from exc

    def _write(self, fh: BinaryIO, data: bytes) -> None:
        fh.write(data)
        if self.fsync:
            fh.flush()
            os.fsync(fh.fileno())

    def _sync_dir(self, path: Path) -> None:
        """Make a new directory entry durable, not only the file's bytes: a checkpoint
        whose name is lost at a power cut would let a step run again."""
        if not self.fsync:
            return
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key} under {self.root}", key=key) from None
        except OSError as exc:
            raise StorageError(f"cannot read {key} under {self.root}: {exc}", key=key) from exc

    def list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.exists():
            return []
        keys = [
            p.relative_to(self.root).as_posix()
            for p in base.rglob("*")
            if p.is_file() and not p.name.startswith(".tmp-")
        ]
        return sorted(keys)

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()
