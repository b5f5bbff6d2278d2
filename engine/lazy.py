"""Modules imported on first use, so ``engine score`` reaches its first request sooner.

``pyarrow.compute`` builds a Python wrapper for each of its ~300 kernels when imported (about
30 ms, a tenth of the time before the first request); most runs need it only later, or never.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["LazyModule", "pc"]


class LazyModule:
    """Stands for the module ``name``: the first attribute read imports it, and each attribute
    read is then kept on this object, so later reads cost what a module's would."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        value = getattr(importlib.import_module(self._name), attr)
        setattr(self, attr, value)
        return value

    def __repr__(self) -> str:
        return f"<lazy module {self._name!r}>"


#: ``pyarrow.compute``, imported on first use.
pc: Any = LazyModule("pyarrow.compute")
