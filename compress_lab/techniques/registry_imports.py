"""Imports every technique module of this package so that it registers itself:
adding a technique is adding one module here (modules starting with "_" are helpers)."""

import importlib
import pkgutil

import compress_lab.techniques as _package

for _info in sorted(pkgutil.iter_modules(_package.__path__), key=lambda m: m.name):
    if not _info.name.startswith("_") and _info.name not in ("base", "registry_imports"):
        importlib.import_module(f"{_package.__name__}.{_info.name}")
