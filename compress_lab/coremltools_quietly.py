"""Importing this module imports coremltools without its console noise (for process preloads)."""

from compress_lab.quiet import import_coremltools

import_coremltools()
