"""The lab's own error types. Every error a user can cause is one of these,
with a message naming the thing, the problem and the fix."""


class LabError(Exception):
    """Base of every error the lab raises on purpose."""


class ConfigError(LabError, ValueError):
    """A technique config, grid spec or option is invalid."""


class ModelLoadError(LabError):
    """A model source cannot be loaded."""


class DataError(LabError):
    """A data folder or its images cannot be used."""


class UnsupportedOpError(LabError):
    """The lab's Core ML runtime cannot execute an op of the program."""


class RuntimeUnavailableError(LabError):
    """A runtime (e.g. native Core ML) is not available on this system."""


class StoreError(LabError):
    """The results store cannot be read or written."""


class CancelledError(LabError):
    """Work was cancelled by the user."""
