from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.errors import CorruptObjectError, SchemaVersionError
from keel.storage.envelope import open_sealed, seal


@given(st.binary(max_size=4096))
def test_roundtrip(body: bytes) -> None:
    assert open_sealed(seal(body, "checkpoint"), key="k", kind="checkpoint") == body


@given(st.binary(min_size=1, max_size=512), st.data())
def test_any_truncation_is_detected(body: bytes, data: st.DataObject) -> None:
    sealed = seal(body, "checkpoint")
    cut = data.draw(st.integers(min_value=0, max_value=len(sealed) - 1))
    with pytest.raises(CorruptObjectError):
        open_sealed(sealed[:cut], key="k", kind="checkpoint")


@given(st.binary(min_size=1, max_size=512), st.data())
def test_any_flipped_body_byte_is_detected(body: bytes, data: st.DataObject) -> None:
    sealed = bytearray(seal(body, "checkpoint"))
    start = sealed.index(b"\n") + 1
    pos = data.draw(st.integers(min_value=start, max_value=len(sealed) - 1))
    sealed[pos] ^= data.draw(st.integers(min_value=1, max_value=255))
    with pytest.raises(CorruptObjectError, match="checksum"):
        open_sealed(bytes(sealed), key="k", kind="checkpoint")


def test_wrong_kind_and_newer_version_are_refused() -> None:
    with pytest.raises(CorruptObjectError, match="expected a checkpoint"):
        open_sealed(seal(b"x", "memory"), key="k", kind="checkpoint")
    newer = seal(b"x", "checkpoint").replace(b'"v":1', b'"v":2')
    with pytest.raises(SchemaVersionError, match="newer"):
        open_sealed(newer, key="k", kind="checkpoint")
