"""The Streamlit app's shared helpers: session keys, cached wrappers of the
engine, the error edge, and widgets built from technique configs. Pages import
from here; the engine (compress_lab) never imports this package or streamlit."""
