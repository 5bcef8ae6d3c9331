"""How a registry finds its members: it imports every module in its own folder once, and each
module registers itself on import (a decorator). The registry's base never names its members,
and never imports its own package (which would be an import circle)."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path

_done: set[str] = set()


def import_members(base_file: str, package: str, packages_only: bool = False) -> None:
    """Import the public modules (or only the sub-packages) beside `base_file`, in alphabetical
    order, once per package. Call it as import_members(__file__, __package__). A private module
    (_name) is a member's helper, imported by that member when used."""
    if package in _done:
        return
    for mod in pkgutil.iter_modules([str(Path(base_file).parent)]):
        if not mod.name.startswith("_") and (mod.ispkg or not packages_only):
            importlib.import_module(f"{package}.{mod.name}")
    _done.add(package)
