"""CorePulse techniques as links of the per-site processor chains."""

from .base import Technique, active_rows, row_mask
from .injection import (
    AdvancedPromptInjector,
    Injection,
    MultiScaleInjector,
    encode_prompt,
)
from .regional import Region, RegionalInjection
from .reweight import TokenReweight
from .self_attention import SelfAttentionControl

__all__ = [
    "AdvancedPromptInjector",
    "Injection",
    "MultiScaleInjector",
    "Region",
    "RegionalInjection",
    "SelfAttentionControl",
    "Technique",
    "TokenReweight",
    "active_rows",
    "encode_prompt",
    "row_mask",
]
