"""Load models, convert them to Core ML, and account for their size."""

from compress_lab.models.metadata import ModelMetadata, Preprocessing
from compress_lab.models.handle import ModelHandle, load_model

__all__ = ["ModelMetadata", "Preprocessing", "ModelHandle", "load_model"]
