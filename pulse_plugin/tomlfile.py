"""TOML text to Python: the standard library's tomllib, or its backport tomli on Python 3.10."""

from __future__ import annotations

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pyproject depends on tomli there
    import tomli as tomllib

loads = tomllib.loads
TOMLDecodeError = tomllib.TOMLDecodeError  # a ValueError
