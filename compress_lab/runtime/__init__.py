"""Core ML execution on any OS: a PyTorch interpreter of ML programs (native Core ML on macOS)."""

from compress_lab.runtime.activation_quantization import (
    activation_quantization_available,
    calibrate_activations,
    linear_quantize_activations,
)
from compress_lab.runtime.native import native_runtime_available
from compress_lab.runtime.program import CoreMLProgram, NativeProgram, load_program

__all__ = ["CoreMLProgram", "NativeProgram", "activation_quantization_available", "calibrate_activations",
           "linear_quantize_activations", "load_program", "native_runtime_available"]
