"""Video outputs: mp4 round trip through imageio/ffmpeg, frame strip PNG, [-1, 1] → uint8 conversion."""

from __future__ import annotations

import imageio.v2 as iio
import numpy as np
import pytest
import torch
from PIL import Image

from longlive.output import frames_to_uint8, write_frame_strip, write_mp4

COLOR = np.array([240, 40, 20], dtype=np.uint8)


def moving_square(t: int = 12, h: int = 48, w: int = 64, size: int = 16) -> np.ndarray:
    """A grey background with a coloured square moving 3 px right per frame."""
    v = np.full((t, h, w, 3), 60, dtype=np.uint8)
    for i in range(t):
        v[i, 8 : 8 + size, 2 + 3 * i : 2 + 3 * i + size] = COLOR
    return v


def read_video(path) -> np.ndarray:
    with iio.get_reader(str(path), format="FFMPEG") as r:
        return np.stack([frame for frame in r])  # list(r) would trust len() == inf for streams


@pytest.mark.parametrize("hw", [(48, 64), (33, 47)])
def test_mp4_round_trip(tmp_path, hw):
    h, w = hw
    video = moving_square(h=h, w=w)
    path = write_mp4(torch.from_numpy(video), tmp_path / "a" / "b" / "v.mp4", fps=8)
    assert path.is_file() and not list(path.parent.glob(".*tmp*"))
    back = read_video(path)
    # Odd sides are padded by one replicated edge pixel for yuv420p; the picture itself is untouched.
    assert back.shape == (12, h + h % 2, w + w % 2, 3)
    back = back[:, :h, :w].astype(np.int16)
    assert np.abs(back - video).mean() < 3.0
    for i in (0, 5, 11):  # the square's centre moves and keeps its colour
        centre = back[i, 16, 2 + 3 * i + 8]
        assert np.abs(centre - COLOR).max() < 20, centre
        assert np.abs(back[i, 40 if h > 40 else h - 2, 2 + 3 * i + 8] - 60).max() < 10


def test_mp4_rejects_bad_input(tmp_path):
    with pytest.raises(TypeError, match="uint8"):
        write_mp4(np.zeros((2, 8, 8, 3), np.float32), tmp_path / "x.mp4", fps=8)
    with pytest.raises(ValueError, match=r"\[T, H, W, 3\]"):
        write_mp4(np.zeros((2, 3, 8, 8), np.uint8), tmp_path / "x.mp4", fps=8)
    assert not list(tmp_path.iterdir())


def test_frame_strip(tmp_path):
    video = moving_square()
    path = write_frame_strip(video, tmp_path / "s" / "strip.png", num=4)
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (48, 4 * 64 + 3 * 2, 3)
    assert np.array_equal(img[:, :64], video[0]) and np.array_equal(img[:, -64:], video[-1])
    assert (img[:, 64:66] == 255).all()  # separator
    few = write_frame_strip(video[:3], tmp_path / "few.png", num=8)
    assert Image.open(few).size == (3 * 64 + 2 * 2, 48)


def test_frames_to_uint8():
    video = torch.linspace(-1.2, 1.2, 3 * 2 * 4 * 5).reshape(1, 3, 2, 4, 5).to(torch.bfloat16)
    out = frames_to_uint8(video)
    assert out.shape == (2, 4, 5, 3) and out.dtype == torch.uint8
    assert out.min() == 0 and out.max() == 255
    ref = ((video[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0)
    assert torch.equal(out, ref)
    assert frames_to_uint8(torch.zeros(3, 1, 2, 2)).eq(128).all()  # 127.5 rounds to even 128
    trunc = frames_to_uint8(video, rounding="truncate")
    ref_t = ((video[0].float() * 0.5 + 0.5).clamp(0, 1) * 255).to(torch.uint8).permute(1, 2, 3, 0)
    assert torch.equal(trunc, ref_t) and (out.int() - trunc.int()).abs().max() <= 1
    with pytest.raises(ValueError, match="one sample"):
        frames_to_uint8(torch.zeros(2, 3, 1, 2, 2))
