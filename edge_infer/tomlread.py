"""TOML parsing on every Python the device runs: tomllib from 3.11, tomli on 3.10 (JetPack 6).

pyproject.toml installs tomli exactly where tomllib is missing, so both always import.
"""

from __future__ import annotations

try:
    import tomllib  # novermin: the tomli fallback below covers Python 3.10
except ModuleNotFoundError:  # Python 3.10 (JetPack 6's Ubuntu 22.04)
    import tomli as tomllib


def loads(text: str) -> dict:
    return tomllib.loads(text)
