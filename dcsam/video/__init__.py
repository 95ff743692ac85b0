"""Video: in-context video object segmentation, memory bounded.

* :class:`VideoSegmenter` - the public API (examples or a labelled frame in, per-frame masks out).
* :func:`open_frames` and the frame sources - lazily decoded image folders, image lists, video files.
* :mod:`dcsam.video.metrics` - DAVIS J, F and J&F.
* :mod:`dcsam.video.tubes` - mask-tube fine-tuning from annotated videos.
"""

from .api import VideoFrameResult, VideoSegmenter
from .frames import CallableSource, FrameSource, ImageFolderSource, ImageSequenceSource, VideoFileSource, open_frames

__all__ = [
    "CallableSource",
    "FrameSource",
    "ImageFolderSource",
    "ImageSequenceSource",
    "VideoFileSource",
    "VideoFrameResult",
    "VideoSegmenter",
    "open_frames",
]
