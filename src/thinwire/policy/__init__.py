"""When to send: always, every:K, the design's trigger, the LAQ lazy rule."""

from .rules import (Always, EveryK, LAQRule, ModelDiffHistory, SendContext, SendPolicy, Trigger,
                    make_policy)

__all__ = ["Always", "EveryK", "LAQRule", "ModelDiffHistory", "SendContext", "SendPolicy",
           "Trigger", "make_policy"]
