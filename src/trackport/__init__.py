"""trackport: export, import, copy and verify MLflow tracking data.

The library API: open stores with `open_source` / `open_sink`, move data with
`trackport.transfer.transfer` (tuned by a `TransferConfig`), check bundles with
`verify_bundle`. The library never prints; pass a progress callback.
"""
from trackport.config import TransferConfig
from trackport.errors import ExitCode, TrackportError
from trackport.stores.base import Selection

__version__ = "0.1.0"

# Imported on first use, so that `import trackport.domain` does not load every store.
_LAZY = {
    "open_source": "trackport.opening",
    "open_sink": "trackport.opening",
    "verify_bundle": "trackport.bundle",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trackport' has no attribute {name!r}")


__all__ = ["ExitCode", "Selection", "TrackportError", "TransferConfig", "__version__", *_LAZY]
