"""Compression techniques. Importing this package registers all of them."""

from compress_lab.techniques.base import (
    REGISTRY, CompressContext, CompressOutcome, DataNeed, Progress, TechniqueConfig, compress, config_from_dict, register,
)

# Technique modules register themselves on import; add new ones here.
from compress_lab.techniques import registry_imports  # noqa: E402,F401

__all__ = ["REGISTRY", "CompressContext", "CompressOutcome", "DataNeed", "Progress", "TechniqueConfig",
           "compress", "config_from_dict", "register"]
