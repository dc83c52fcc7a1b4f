"""trackport: export, import, copy and verify MLflow tracking data.

The library API: open stores with `open_source` / `open_sink`, move data with `transfer`,
check bundles with `verify_bundle`. The library never prints; pass a progress callback.
"""
from trackport.errors import ExitCode, TrackportError
from trackport.stores.base import Selection

__version__ = "0.1.0"

__all__ = ["ExitCode", "Selection", "TrackportError", "__version__"]
