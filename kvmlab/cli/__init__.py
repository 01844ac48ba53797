"""The ``kvmlab`` command and the programs built on the lifecycle (``demo``, ``doctor``)."""

from kvmlab.cli.app import main

__all__ = ["main"]
