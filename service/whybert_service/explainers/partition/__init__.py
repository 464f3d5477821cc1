"""whybert's own SHAP Partition engine: shap's values, as scheduled work.

`tree` builds the token hierarchy, `masking` the masked rows (as token ids), `engine` runs
the Owen-value recursion as a state machine that hands out rounds of rows, and `task`
feeds those rounds through a model's worker.
"""

from .engine import PartitionEngine, PartitionResult, explain_text
from .masking import MaskingSpec, PreparedText, prepare_text

__all__ = ["MaskingSpec", "PartitionEngine", "PartitionResult", "PreparedText", "explain_text", "prepare_text"]
