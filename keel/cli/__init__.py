"""The ``keel`` command line (``keel.cli:main``)."""

from keel.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
