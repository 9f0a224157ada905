"""Real services for the suite: one local Ray instance per session, a real S3-compatible
server process (moto's standalone server) on 127.0.0.1, and per-test storage."""

from __future__ import annotations

import os

# Before Ray is imported anywhere: keep every Ray service on loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Tools may act only under the tool roots: the tests' services and outboxes live under /tmp.
os.environ.setdefault("KEEL_TOOL_ROOTS", "/tmp")
# The shipped policy, plus approval exemptions for the suite's own harmless test tools.
os.environ.setdefault("KEEL_POLICY", os.path.join(os.path.dirname(__file__), "policy.csv"))


import contextlib
import logging
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
import s3fs

from keel.client import RAY_NODE_ENV
from keel.storage import open_store
from keel.storage.base import CheckpointStore
from tests.fakes import (  # noqa: F401
    free_port,
    local_router,
    scripted,
    scripted_router,
    scripted_server,
    serve_port,
)

TEST_POLICY = os.environ["KEEL_POLICY"]
S3_KEY = "keel-test"
S3_SECRET = "keel-test-secret"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in its own process, on a free loopback port."""
    port = free_port()
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": S3_KEY,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("moto server did not start") from None
            time.sleep(0.1)
    yield endpoint
    proc.terminate()
    proc.wait(timeout=10)


def s3_options(endpoint: str) -> dict[str, Any]:
    return {"endpoint_url": endpoint, "key": S3_KEY, "secret": S3_SECRET}


def new_bucket(endpoint: str) -> str:

    fs = s3fs.S3FileSystem(**s3_options(endpoint))
    bucket = f"keel-{uuid.uuid4().hex[:12]}"
    fs.mkdir(bucket)
    return bucket


@dataclass
class Backend:
    """Where a test's checkpoints live: a URL plus the fsspec options to reach it."""

    name: str
    url: str
    options: dict[str, Any] = field(default_factory=dict)

    def open(self) -> CheckpointStore:
        return open_store(self.url, self.options, fsync=False)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """Every test using this runs once on a local directory and once on S3."""
    if request.param == "local":
        return Backend("local", str(tmp_path / "store"))
    endpoint = request.getfixturevalue("s3_endpoint")
    return Backend("s3", f"s3://{new_bucket(endpoint)}/keel", s3_options(endpoint))


@pytest.fixture
def s3_backend(s3_endpoint: str) -> Backend:
    """A fresh bucket on the moto server."""
    return Backend("s3", f"s3://{new_bucket(s3_endpoint)}/keel", s3_options(s3_endpoint))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """One real local Ray instance for the whole session (no dashboard), its node set up
    as Keel sets up the nodes it starts."""

    for name, value in RAY_NODE_ENV.items():
        os.environ.setdefault(name, value)
    ray.init(
        address="local",
        namespace="keel",
        include_dashboard=False,
        num_cpus=4,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    yield
    ray.shutdown()


# The Ray tier's longest files, longest first: xdist hands whole files to its two workers
# in collection order, so these start at once and the short ones fill in around them.
LONGEST_FIRST = (
    "tests/cli/test_two_processes.py",
    "tests/evals/test_eval_cli.py",
    "tests/cli/test_cli.py",
    "tests/cluster/test_multinode.py",
    "docs/tutorial.md",
    "tests/runtime/test_simulation.py",
    "tests/actors/test_orchestrator.py",
    "tests/actors/test_ray_restart.py",
    "README.md",
    "tests/sandbox/test_incident.py",
)


def _longest_first(item: pytest.Item) -> int:
    path = item.nodeid.split("::", 1)[0]
    return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """The Ray tier runs on two workers (``-n 2``) a whole file at a time, so a module's
    fixtures (a deployed router, an evaluated suite) are made once, and a document's
    blocks run in order."""
    from xdist.scheduler import LoadScopeScheduling  # noqa: PLC0415  # only under xdist

    class ByFile(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return nodeid.split("::", 1)[0]

    return ByFile(config, log)


def _processes_under(folder: Path) -> dict[int, str]:
    """Live processes whose command line names ``folder`` (a test's ``keel up``, say)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            args = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if str(folder) in args:
            found[int(proc.name)] = args
    return found


@pytest.fixture(scope="session", autouse=True)
def _nothing_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A test that leaves a process of its own behind (a background instance, a server)
    fails the session: it would hold a Ray instance's CPU through every later test."""
    base = tmp_path_factory.getbasetemp()
    yield
    deadline = time.monotonic() + 10  # a process told to stop in the last teardown
    while (left := _processes_under(base)) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes left running by tests: {left}"


def _no_ray(*_args: Any, **_kwargs: Any) -> None:
    raise RuntimeError(
        "this test starts Ray but is not marked `ray`: mark it, or keep it in-process"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that needs Ray, through any of its fixtures, belongs to the `ray` tier; the
    fast tier (``-m "not ray"``) is everything else, and runs first in ``make test``."""
    for item in items:
        if "ray_session" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.ray)
    items.sort(key=_longest_first)  # stable: a file's tests keep their order


@pytest.fixture(autouse=True)
def _cli_path_changes_stay_in_the_test(monkeypatch: pytest.MonkeyPatch) -> None:
    """``main(argv)`` puts the working folder on sys.path and PYTHONPATH, as the ``keel``
    command does for a user's workflow module; run in-process, that is undone after each
    test (a PYTHONPATH left behind would reach every later subprocess)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))


@pytest.fixture(autouse=True)
def _fast_tier_stays_off_ray(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A test outside the `ray` tier that starts Ray anyway fails at once, naming why."""
    if request.node.get_closest_marker("ray") is None and not ray.is_initialized():
        monkeypatch.setattr(ray, "init", _no_ray)
