from __future__ import annotations

from collections.abc import Callable

import pytest

from keel.storage.base import CheckpointStore
from keel.testing.conformance import CHECKS
from tests.conftest import Backend


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
def test_backend_conforms(backend: Backend, check: Callable[[CheckpointStore], None]) -> None:
    store = backend.open()
    assert isinstance(store, CheckpointStore)
    check(store)
