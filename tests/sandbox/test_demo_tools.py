"""The incident demo's restart tool reports what happened, in the sandbox, against the real
demo service: a service that is not running is not "restarted", and a running one is."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.examples import demo_service
from keel.examples.demo_tools import RestartService
from keel.sandbox.bwrap import isolation

pytestmark = pytest.mark.skipif(not isolation()[0], reason=isolation()[1])


def restart(root: Path, port: int, key: str) -> dict[str, object]:
    args = {"root": str(root), "port": port, "config_action": "keep"}
    result = RestartService().apply(args, key)
    assert isinstance(result, dict)
    return result


def test_a_service_that_is_not_running_is_not_restarted(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    demo_service.prepare(root, "bad_config")
    result = restart(root, demo_service.free_port(), "run/1/mitigate/1")
    assert result["restarted"] is False and result["why"] == "not running"


def test_a_running_service_is_restarted_once(tmp_path: Path) -> None:
    root = tmp_path / "svc"
    demo_service.prepare(root, "bad_config")
    port = demo_service.free_port()
    proc = demo_service.start(root, port)
    try:
        before = demo_service.health(port)[1]["started"]
        result = restart(root, port, "run/1/mitigate/1")
        assert result["restarted"] is True and result["why"] == ""
        assert demo_service.health(port)[1]["started"] != before
    finally:
        demo_service.stop(proc)
    # The service's own log: one restart asked for.
    log = (root / "service.log").read_text()
    assert log.count("restart requested") == 1
