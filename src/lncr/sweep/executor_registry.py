"""The sweep's executors by name (``sweep.executor``, ``--executor``): one entry each, naming
the factory in :mod:`lncr.sweep.executors`. A leaf module, so that settings can be checked
against it without importing the executors (and torch)."""

from __future__ import annotations

#: name -> factory function in lncr.sweep.executors
EXECUTORS: dict[str, str] = {"local": "local_executor", "ray": "ray_executor"}


def list_executors() -> list[str]:
    """The registered executor names."""
    return list(EXECUTORS)
