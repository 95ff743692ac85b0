"""Lazily decoded frame sequences: an image folder, a list of images, or a video file.

A :class:`FrameSource` never holds more than a handful of decoded frames: iterating decodes one
frame at a time, and reading backwards from a video file decodes bounded chunks. Frames come
back as ``uint8`` RGB ``(H, W, 3)`` arrays, like :func:`dcsam.io.read_image`.

    frames = open_frames("clip.mp4")            # OpenCV, or PyAV when installed and asked for
    frames = open_frames("JPEGImages/dog/")     # image files, sorted by the numbers in their names
    frames = open_frames(["f0.jpg", "f1.jpg"])  # anything read_image() reads: paths, bytes, arrays
    for index, frame in frames.iter_range(0):   # decodes lazily
        ...
"""

from __future__ import annotations

import os
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from ..io import ImageSource, read_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif")


def natural_key(name: str) -> list:
    """Sort key that orders ``frame2`` before ``frame10``."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


class FrameSource(ABC):
    """A sequence of video frames, decoded on demand.

    ``len()`` is the number of frames (for some video files only an estimate from the container:
    iteration is the truth and stops at the real end). ``names`` gives one name per frame (file
    stems for image folders, ``%05d`` indices otherwise), used to match annotation files.
    """

    name: str = "frames"

    @abstractmethod
    def __len__(self) -> int: ...

    @abstractmethod
    def read(self, index: int) -> np.ndarray:
        """Decode frame ``index`` (random access; may seek in a video file)."""

    def frame_name(self, index: int) -> str:
        return f"{index:05d}"

    def iter_range(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(index, frame)`` from ``start`` towards ``stop`` (exclusive), ``step`` = 1 or -1.

        ``stop`` None means to the end (forward) or to frame 0 inclusive (backward).
        """
        if step not in (1, -1):
            raise ValueError("step must be 1 or -1")
        if step == 1:
            end = len(self) if stop is None else min(stop, len(self))
            for i in range(start, end):
                yield i, self.read(i)
        else:
            end = -1 if stop is None else stop
            for i in range(start, end, -1):
                yield i, self.read(i)

    def __iter__(self) -> Iterator[np.ndarray]:
        for _, frame in self.iter_range(0):
            yield frame

    def __getitem__(self, index: int) -> np.ndarray:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"frame {index} out of range (0..{n - 1})")
        return self.read(index)

    def close(self) -> None:  # noqa: B027 - optional hook: most sources hold nothing open
        """Release any open file handle (sources reopen it when read again)."""

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ImageSequenceSource(FrameSource):
    """Frames given as a list of image sources (paths, bytes, arrays, PIL images), read lazily."""

    def __init__(self, items: Sequence[ImageSource], names: Sequence[str] | None = None, name: str = "images") -> None:
        self.items = items
        if names is not None and len(names) != len(items):
            raise InputError(f"{len(names)} frame names for {len(items)} frames")
        self.names = list(names) if names is not None else None
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def read(self, index: int) -> np.ndarray:
        return read_image(self.items[index])

    def frame_name(self, index: int) -> str:
        if self.names is not None:
            return self.names[index]
        item = self.items[index]
        if isinstance(item, (str, os.PathLike)):
            return Path(item).stem
        return super().frame_name(index)


class CallableSource(FrameSource):
    """``length`` frames produced by ``fn(index)`` (e.g. a download per frame), read lazily."""

    def __init__(self, length: int, fn: Callable[[int], ImageSource], name: str = "frames") -> None:
        self.length, self.fn, self.name = int(length), fn, name

    def __len__(self) -> int:
        return self.length

    def read(self, index: int) -> np.ndarray:
        return read_image(self.fn(index))


class ImageFolderSource(ImageSequenceSource):
    """The image files of a folder, in natural order of their names (``00000.jpg``, ``00001.jpg`` ...)."""

    def __init__(self, folder: str | os.PathLike, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> None:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder of frames")
        files = sorted(
            (p for p in folder.iterdir() if p.suffix.lower() in extensions and p.is_file()),
            key=lambda p: natural_key(p.name),
        )
        if not files:
            raise InputError(f"{folder}: no image files ({', '.join(extensions)})")
        super().__init__([str(p) for p in files], [p.stem for p in files], name=folder.name)
        self.folder = folder


class VideoFileSource(FrameSource):
    """Frames of a video file, decoded one at a time with OpenCV (default) or PyAV.

    Forward iteration decodes sequentially; random access seeks; backward iteration decodes
    chunks of ``chunk`` frames (seek to the chunk start, decode forward, hand them out reversed),
    so memory stays bounded whatever the length.
    """

    def __init__(self, path: str | os.PathLike, backend: str = "auto", chunk: int = 16) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise InputError(f"{self.path}: no such video file")
        if backend == "auto":
            backend = "opencv"
        if backend == "pyav":
            try:
                import av  # noqa: F401
            except ImportError as exc:
                raise InputError("video backend 'pyav' needs the 'av' package (pip install av)") from exc
        elif backend != "opencv":
            raise ValueError(f"unknown video backend {backend!r}; use opencv or pyav")
        self.backend = backend
        self.chunk = max(1, int(chunk))
        self.name = self.path.stem
        self._cap: Any = None  # OpenCV capture (cv2.VideoCapture) kept open for sequential reads
        self._next = 0  # index of the frame the open capture will decode next
        self._length = self._probe_length()

    # -- OpenCV ---------------------------------------------------------------------------------
    def _open_cv(self):
        import cv2

        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            raise InputError(f"{self.path}: cannot open the video (OpenCV)")
        return cap

    def _probe_length(self) -> int:
        if self.backend == "pyav":
            import av

            with av.open(str(self.path)) as container:
                stream = container.streams.video[0]
                n = int(stream.frames or 0)
                if n <= 0:  # no count in the container: count by demuxing (no decoding)
                    n = sum(1 for p in container.demux(stream) if p.size)
            return n
        import cv2

        cap = self._open_cv()
        try:
            n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
            if n <= 0:  # unknown: count by grabbing (no colour conversion)
                n = 0
                while cap.grab():
                    n += 1
            return n
        finally:
            cap.release()

    def __len__(self) -> int:
        return self._length

    def _cv_seek(self, index: int) -> None:
        import cv2

        if self._cap is None:
            self._cap = self._open_cv()
            self._next = 0
        if index != self._next:
            if index > self._next and index - self._next <= 2 * self.chunk:
                while self._next < index and self._cap.grab():  # short skip: grab is cheaper than a seek
                    self._next += 1
            else:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, index)
                self._next = index

    def _cv_read(self) -> np.ndarray | None:
        import cv2

        ok, bgr = self._cap.read()
        if not ok:
            return None
        self._next += 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    # -- PyAV -----------------------------------------------------------------------------------
    def _av_frames(self, start: int) -> Iterator[np.ndarray]:
        import av

        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            i = 0
            for frame in container.decode(stream):
                if i >= start:
                    yield frame.to_ndarray(format="rgb24")
                i += 1

    # -- public ---------------------------------------------------------------------------------
    def read(self, index: int) -> np.ndarray:
        if self.backend == "pyav":
            for frame in self._av_frames(index):
                return frame
            raise InputError(f"{self.path}: frame {index} could not be decoded")
        self._cv_seek(index)
        decoded = self._cv_read()
        if decoded is None:
            raise InputError(f"{self.path}: frame {index} could not be decoded")
        return decoded

    def iter_range(self, start: int = 0, stop: int | None = None, step: int = 1) -> Iterator[tuple[int, np.ndarray]]:
        if step not in (1, -1):
            raise ValueError("step must be 1 or -1")
        if step == 1:
            end = stop if stop is not None else None
            if self.backend == "pyav":
                for i, frame in enumerate(self._av_frames(start), start):
                    if end is not None and i >= end:
                        return
                    yield i, frame
                return
            self._cv_seek(start)
            i = start
            while end is None or i < end:
                decoded = self._cv_read()
                if decoded is None:  # the real end (the container's count may be off)
                    return
                yield i, decoded
                i += 1
            return
        # backward: bounded chunks, each decoded forward and handed out reversed
        low = 0 if stop is None else stop + 1
        hi = start
        while hi >= low:
            lo = max(low, hi - self.chunk + 1)
            frames = [f for _, f in self.iter_range(lo, hi + 1, 1)]
            for k in range(len(frames) - 1, -1, -1):
                yield lo + k, frames[k]
            frames.clear()
            hi = lo - 1

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
            self._next = 0


FramesLike = Any  # FrameSource | folder | video path | sequence of ImageSource


def open_frames(frames: FramesLike, *, video_backend: str = "auto") -> FrameSource:
    """A :class:`FrameSource` for a folder of images, a video file, or a list of image sources."""
    if isinstance(frames, FrameSource):
        return frames
    if isinstance(frames, (str, os.PathLike)):
        p = Path(frames)
        if p.is_dir():
            return ImageFolderSource(p)
        if p.is_file():
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                return ImageSequenceSource([str(p)], name=p.stem)
            return VideoFileSource(p, backend=video_backend)
        raise InputError(f"{p}: no such video file or folder of frames")
    if isinstance(frames, np.ndarray):
        if frames.ndim != 4:
            raise InputError(f"a frame array must be (T, H, W, 3), got shape {frames.shape}")
        return ImageSequenceSource(list(frames))
    if isinstance(frames, Sequence) and not isinstance(frames, (bytes, bytearray)):
        if not frames:
            raise InputError("no frames given")
        return ImageSequenceSource(frames)
    raise InputError(
        f"cannot read frames from {type(frames).__name__}; give a folder, a video file or a list of images"
    )
