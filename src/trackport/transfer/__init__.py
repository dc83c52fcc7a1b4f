from trackport.transfer.engine import ProgressEvent, transfer
from trackport.transfer.summary import Summary

__all__ = ["ProgressEvent", "Summary", "transfer"]
