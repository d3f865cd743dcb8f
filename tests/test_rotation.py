"""A clip with display rotation comes out of data prep as ffmpeg displays it (issue 14, item 3),
whichever video backend is configured: ffmpeg (a static build from imageio-ffmpeg) is the
reference, as a user's player is."""

import subprocess

import imageio_ffmpeg
import numpy as np
import pytest

from data_prep.decode import decode_first_clip
from data_prep.video import prepare_frames
from svgen.config import load_config
from svgen.media.mp4 import write_mp4

from .conftest import TINY

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()
H, W, FPS = 64, 96, 8


@pytest.fixture(scope="module")
def upright(tmp_path_factory):
    """An asymmetric picture (red block top-left, green bar at the bottom), 2 s, no rotation."""
    frames = np.full((2 * FPS, H, W, 3), 30, np.uint8)
    frames[:, :24, :32] = (230, 30, 30)
    frames[:, -10:, :] = (30, 200, 30)
    path = tmp_path_factory.mktemp("rotation") / "upright.mp4"
    t = np.arange(2 * 16000) / 16000
    return write_mp4(path, frames, fps=FPS, wave=(0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32),
                     sample_rate=16000)


def _displayed(path) -> np.ndarray:
    """What ffmpeg shows: its decoded frames with the display rotation applied (its default)."""
    ppm = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-frames:v", "1", "-c:v", "ppm", "-f",
                          "image2pipe", "-"], capture_output=True, check=True).stdout
    w, h = map(int, ppm.split(b"\n")[1].split())                              # P6 / width height / 255
    raw = subprocess.run([FFMPEG, "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                         capture_output=True, check=True).stdout
    return np.frombuffer(raw, np.uint8).reshape(-1, h, w, 3)


@pytest.mark.parametrize("backend", ["pyav", "decord", "auto"])
@pytest.mark.parametrize("degrees", [90, 180, 270])
def test_rotated_clip_matches_what_ffmpeg_displays(upright, tmp_path, degrees, backend):
    rotated = tmp_path / f"r{degrees}.mp4"
    subprocess.run([FFMPEG, "-y", "-loglevel", "error", "-display_rotation", str(degrees), "-i", str(upright),
                    "-c", "copy", str(rotated)], check=True)
    shown = _displayed(rotated)
    assert shown.shape[1:3] == ((W, H) if degrees != 180 else (H, W))         # ffmpeg did turn it
    cfg = load_config(TINY, ["data.seconds=1.0", "data.size=64", f"prep.video_backend={backend}"])
    clip = decode_first_clip(str(rotated), cfg.data, cfg.prep)
    want = prepare_frames(shown[:cfg.data.num_frames].copy(), 0, cfg.data.size)  # the same resize and crop
    assert np.abs(clip.frames.astype(int) - want).mean() < 2.0
    upright_clip = decode_first_clip(str(upright), cfg.data, cfg.prep)
    assert np.abs(clip.frames.astype(int) - upright_clip.frames).mean() > 20    # and it differs from unturned
