"""Module ``__getattr__``/``__dir__`` for public packages whose names load on first use.

``line_markread`` and ``line_markread.testing`` export names whose modules
import ``linebot`` and aiohttp (1-2 s).  Resolving them lazily keeps
``import line_markread`` and the pytest plugin, which every pytest session in
the environment loads, close to free.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any


def lazy_exports(
    package: str, table: Mapping[str, str], public: Sequence[str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for *package*: name -> relative module in *table*."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)  # looked up once
        return value

    def __dir__() -> list[str]:
        return sorted(set(vars(sys.modules[package])) | set(public))

    return __getattr__, __dir__
