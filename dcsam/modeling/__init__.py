"""DC-SAM building blocks: one small module per component."""

from .attention import (
    Attention,
    CycleCrossAttentionLayer,
    PositionEmbeddingSine,
    SelfAttentionLayer,
    cycle_consistency_bias,
)
from .dcsam import DCSAM, QueryFeatures, SupportFeatures
from .project_prompter import ProjectPrompter
from .prompt_generator import PromptGenerator, Sam2Downscale
from .sam_adapter import SamAdapter, SamFeatures

__all__ = [
    "Attention",
    "CycleCrossAttentionLayer",
    "DCSAM",
    "PositionEmbeddingSine",
    "ProjectPrompter",
    "PromptGenerator",
    "QueryFeatures",
    "Sam2Downscale",
    "SamAdapter",
    "SamFeatures",
    "SelfAttentionLayer",
    "SupportFeatures",
    "cycle_consistency_bias",
]
