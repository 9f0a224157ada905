"""Any fsspec URL as a checkpoint store; ``s3://bucket/prefix`` goes through s3fs.

The create-if-absent write that fences checkpoints is a conditional PUT on S3
(``If-None-Match: *``, which s3fs sends for ``mode="create"``; AWS S3 and moto's server
honour it, and the conformance suite checks it against the latter) and an exclusive open
(``"xb"``) on filesystems that have one.
"""

from __future__ import annotations

from typing import Any

import fsspec

from keel.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from keel.storage.base import check_key


class FsspecStore:
    """Objects through fsspec. Only whole-object ``pipe``/``cat`` are used, which map to
    single PUT and GET requests on object stores."""

    def __init__(self, url: str, options: dict[str, Any] | None = None) -> None:
        opts = dict(options or {})
        protocol = url.split("://", 1)[0]
        if protocol in ("s3", "s3a"):
            # Listings must be fresh: another node may have written since.
            opts.setdefault("use_listings_cache", False)
        try:
            fs, root = fsspec.core.url_to_fs(url, **opts)
        except (ImportError, ValueError, TypeError) as exc:
            raise StorageError(f"cannot open storage {url!r}: {exc}", retryable=False) from exc
        self._url = url
        self.fs = fs
        self.root = root.rstrip("/")
        self._conditional_put = protocol in ("s3", "s3a")

    @property
    def url(self) -> str:
        return self._url

    def _path(self, key: str) -> str:
        return f"{self.root}/{check_key(key)}"

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            self.fs.pipe_file(path, data)
        except Exception as exc:
            raise StorageError(f"cannot write {key} to {self._url}: {exc}", key=key) from exc

    def create(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            if self._conditional_put:
                self.fs.pipe_file(path, data, mode="create")
            else:
                with self.fs.open(path, "xb") as fh:
                    fh.write(data)
        except FileExistsError:
            raise ObjectExistsError(
                f"object {key} already exists in {self._url}", key=key
            ) from None
        except Exception as exc:
            raise StorageError(f"cannot write {key} to {self._url}: {exc}", key=key) from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data = self.fs.cat_file(path)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key} in {self._url}", key=key) from None
        except Exception as exc:
            raise StorageError(f"cannot read {key} from {self._url}: {exc}", key=key) from exc
        return bytes(data)

    def list(self, prefix: str) -> list[str]:
        base = f"{self.root}/{prefix}".rstrip("/") if prefix else self.root
        try:
            self.fs.invalidate_cache(base)
            found = self.fs.find(base)
        except FileNotFoundError:
            return []
        except Exception as exc:
            raise StorageError(f"cannot list {prefix!r} in {self._url}: {exc}") from exc
        cut = len(self.root) + 1
        return sorted(p[cut:] for p in found if p.startswith(self.root + "/"))

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            self.fs.rm_file(path)
        except FileNotFoundError:
            pass
        except Exception as exc:
            raise StorageError(f"cannot delete {key} from {self._url}: {exc}", key=key) from exc
