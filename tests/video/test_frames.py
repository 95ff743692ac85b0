"""Lazily decoded frame sources: image folders, lists, video files (OpenCV)."""

import cv2
import numpy as np
import pytest

from dcsam import InputError
from dcsam.video import CallableSource, ImageFolderSource, ImageSequenceSource, VideoFileSource, open_frames
from dcsam.video.frames import natural_key


def grey_frames(n, h=48, w=64):
    """Frame i shows i in binary as six 10-pixel-wide black / white bars (survives lossy codecs)."""
    out = []
    for i in range(n):
        f = np.zeros((h, w, 3), np.uint8)
        for bit in range(6):
            if i >> bit & 1:
                f[:, bit * 10 : bit * 10 + 10] = 255
        out.append(f)
    return out


@pytest.fixture
def video_file(tmp_path):
    path = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (64, 48))
    if not writer.isOpened():
        pytest.skip("OpenCV cannot write mp4v here")
    for f in grey_frames(40):
        writer.write(f)
    writer.release()
    return path


def level(frame):
    return sum(1 << bit for bit in range(6) if frame[8:40, bit * 10 + 2 : bit * 10 + 8].mean() > 127)


def test_image_folder_natural_order_and_names(tmp_path):
    for i in (10, 2, 1):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((8, 8, 3), i, np.uint8))
    (tmp_path / "notes.txt").write_text("x")
    src = ImageFolderSource(tmp_path)
    assert len(src) == 3 and [src.frame_name(i) for i in range(3)] == ["frame1", "frame2", "frame10"]
    assert [int(f[0, 0, 0]) for f in src] == [1, 2, 10]
    assert [i for i, _ in src.iter_range(2, step=-1)] == [2, 1, 0]
    assert natural_key("a10") > natural_key("a9")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        ImageFolderSource(tmp_path / "empty")


def test_sources_decode_one_frame_at_a_time():
    made = []
    src = CallableSource(100, lambda i: (made.append(i), grey_frames(1)[0])[1])
    it = src.iter_range(0)
    next(it), next(it), next(it)
    assert made == [0, 1, 2]  # nothing decoded ahead
    assert src[-1].shape == (48, 64, 3) and made[-1] == 99
    with pytest.raises(IndexError):
        src[100]


def test_video_file_forward_backward_random(video_file):
    src = VideoFileSource(video_file, chunk=16)
    assert len(src) == 40 and src.name == "clip"
    fwd = [(i, level(f)) for i, f in src.iter_range(0)]
    assert [i for i, _ in fwd] == list(range(40)) and [v for _, v in fwd] == list(range(40))
    bwd = [(i, level(f)) for i, f in src.iter_range(39, step=-1)]
    assert [i for i, _ in bwd] == list(range(39, -1, -1)) and all(i == v for i, v in bwd)
    part = [(i, level(f)) for i, f in src.iter_range(25, 10, step=-1)]
    assert [i for i, _ in part] == list(range(25, 10, -1)) and all(i == v for i, v in part)
    assert level(src.read(17)) == 17 and level(src.read(3)) == 3 and level(src[-1]) == 39
    src.close()
    with pytest.raises(InputError, match="could not be decoded"):
        src.read(45)


def test_open_frames_dispatch(tmp_path, video_file):
    assert isinstance(open_frames(video_file), VideoFileSource)
    cv2.imwrite(str(tmp_path / "00000.jpg"), np.zeros((8, 8, 3), np.uint8))
    assert isinstance(open_frames(tmp_path), ImageFolderSource)
    seq = open_frames(grey_frames(3))
    assert isinstance(seq, ImageSequenceSource) and len(seq) == 3 and seq.frame_name(1) == "00001"
    assert len(open_frames(np.stack(grey_frames(4)))) == 4
    with pytest.raises(InputError, match="no such video"):
        open_frames(tmp_path / "missing.mp4")
    with pytest.raises(InputError):
        open_frames(42)
