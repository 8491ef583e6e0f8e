"""compress lab: compress neural networks with Core ML Tools and measure every trade-off.

The Python API (see compress_lab/api.py and the README's "Python API"):

    import compress_lab as lab
    results = lab.run("examples/mnist_sweep.toml")
    results.table(); results.figure(); results.best(top1_drop=1.0)
"""

__version__ = "0.1.0"

API = ("load_model", "sweep_spec", "run", "open_results", "Results", "RunRow", "compress", "config_from_dict",
       "evaluate_model", "default_store")
__all__ = [*API, "__version__"]


def __getattr__(name):  # the API loads the engine on first use: `import compress_lab.cli` stays quick
    if name in API:
        from compress_lab import api
        return getattr(api, name)
    raise AttributeError(f"module 'compress_lab' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *API})
