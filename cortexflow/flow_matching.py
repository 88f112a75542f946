"""The seed library's ``cortexflow.flow_matching``: the rectified-flow matcher
(:mod:`cortexflow.models.flow`) and the EMA (:mod:`cortexflow.models.ema`)."""

from cortexflow.models.ema import EMAModel
from cortexflow.models.flow import FlowConfig, RectifiedFlowMatcher

__all__ = ["EMAModel", "FlowConfig", "RectifiedFlowMatcher"]
