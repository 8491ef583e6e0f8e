"""Core ML execution on any OS: a PyTorch interpreter of ML programs (native Core ML on macOS)."""

from compress_lab.runtime.native import native_runtime_available
from compress_lab.runtime.program import CoreMLProgram, NativeProgram, load_program

__all__ = ["CoreMLProgram", "NativeProgram", "load_program", "native_runtime_available"]
