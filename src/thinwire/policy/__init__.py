"""When to send: always, every:K, the design's trigger, the LAQ lazy rule; budgeted selection."""

from .rules import (Always, EveryK, LAQRule, ModelDiffHistory, SendContext, SendPolicy, Trigger,
                    make_policy)
from .select import select_budget, select_top_k

__all__ = ["Always", "EveryK", "LAQRule", "ModelDiffHistory", "SendContext", "SendPolicy",
           "Trigger", "make_policy", "select_budget", "select_top_k"]
