from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("line-markread")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without installing
    __version__ = "0.0.0+unknown"
