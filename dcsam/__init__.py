"""dcsam: in-context segmentation (DC-SAM and a SAM-free lite engine) for labelling platforms."""

from .api import InContextSegmenter, Prediction
from .config import SegmenterConfig
from .engines.base import Episode, LabelledImage, SegmentResult
from .errors import CheckpointError, DcsamError, InputError

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "DcsamError",
    "Episode",
    "InContextSegmenter",
    "InputError",
    "LabelledImage",
    "Prediction",
    "SegmentResult",
    "SegmenterConfig",
    "__version__",
]
