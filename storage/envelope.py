"""Self-checking object format: a one-line JSON header, then the body bytes.

The header carries the format version, the body's size and its SHA-256, so a torn or
tampered object is detected before any byte of it is trusted.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from keel.errors import CorruptObjectError, SchemaVersionError

FORMAT_VERSION = 1
MAGIC = "keel"


def digest(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def seal(body: bytes, kind: str) -> bytes:
    """Wrap ``body`` with a header naming its kind, size and checksum."""
    header = {
        "magic": MAGIC,
        "v": FORMAT_VERSION,
        "kind": kind,
        "size": len(body),
        "sha256": digest(body),
    }
    return json.dumps(header, separators=(",", ":")).encode() + b"\n" + body


def open_sealed(data: bytes, *, key: str, kind: str) -> bytes:
    """Return the body of a sealed object, or raise ``CorruptObjectError`` saying why."""
    head, sep, body = data.partition(b"\n")
    if not sep:
        raise CorruptObjectError(f"{key}: no header line (truncated?)", key=key)
    try:
        header: dict[str, Any] = json.loads(head)
    except ValueError as exc:
        raise CorruptObjectError(f"{key}: unreadable header ({exc})", key=key) from None
    if not isinstance(header, dict) or header.get("magic") != MAGIC:
        raise CorruptObjectError(f"{key}: not a Keel object", key=key)
    version = header.get("v")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise SchemaVersionError(
            f"{key}: object format v{version} is newer than this Keel reads "
            f"(v{FORMAT_VERSION}); upgrade Keel",
            key=key,
        )
    if header.get("kind") != kind:
        raise CorruptObjectError(
            f"{key}: expected a {kind} object, found {header.get('kind')!r}", key=key
        )
    if header.get("size") != len(body):
        raise CorruptObjectError(
            f"{key}: size {len(body)} bytes, header says {header.get('size')} (torn write)",
            key=key,
        )
    if header.get("sha256") != digest(body):
        raise CorruptObjectError(f"{key}: checksum mismatch", key=key)
    return body
