"""A workflow module that leaves a marker when it is imported: the runs API must refuse a
caller before any of a workflow's code runs."""

import os
from pathlib import Path

Path(os.environ.get("KEEL_TEST_IMPORT_MARKER", "/tmp/keel-imported")).touch()

from tests.cli.sendflow import flow as wf  # noqa: E402

__all__ = ["wf"]
