"""The Invar core (stage 2), one room per idea:

- ``settings``: everything that changes a score (stored in the manifest);
- ``windows``, ``tokens``: the reading of a node (its windows, their token sequences);
- ``forward``, ``precision``, ``passage_cache``: the torch backend (a vLLM engine plugs into
  the scorer through ``InvarScorer.use_engine``);
- ``scorer``: ``InvarScorer.read``, the one reading of (queries, nodes) -> node scores, run
  with gradients in training and under inference mode in serving;
- ``fusion``: the fused score; ``calibration``: the relevance probability every score that
  leaves the package is; ``early_stop``: how many candidates are read;
- ``reranker``: stage 2 over any candidates; ``two_stage``: the two-stage retriever;
- ``projector``, ``artifacts``: the trained parts and how they are saved and loaded;
- ``checks``: what the framework shells accept.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InvarScorer", "InvarSettings", "ScorerSettings", "Stage2Reranker",
           "TwoStageRetriever", "fused_score", "settings_score"]


def __getattr__(name: str) -> Any:
    """The core loads on first use, so its settings are read without torch."""
    if name in ("InvarSettings", "ScorerSettings"):
        from . import settings as found
    elif name in ("fused_score", "settings_score"):
        from . import fusion as found
    elif name == "InvarScorer":
        from . import scorer as found
    elif name == "Stage2Reranker":
        from . import reranker as found
    elif name == "TwoStageRetriever":
        from . import two_stage as found
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(found, name)
