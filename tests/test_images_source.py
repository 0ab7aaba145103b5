"""The images: frame source: order, repetition, pacing and unreadable files."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from checkin.badges import write_badge
from device.config import CameraConfig
from device.scanner.frames import CameraError, SourceExhausted, open_source
from device.scanner.images import ImagesSource


def drain(source) -> list[np.ndarray]:
    shown = []
    while True:
        try:
            with source.capture(timeout=1) as frame:
                shown.append(frame)
        except SourceExhausted:
            return shown


def test_each_image_is_shown_for_its_frames_in_name_order(tmp_path) -> None:
    write_badge(tmp_path / "2.png", "B")
    write_badge(tmp_path / "1.png", None)
    (tmp_path / "3.png").write_bytes(b"broken")
    source = open_source(CameraConfig(f"images:{tmp_path}", frames_per_image=3, fps=200),
                         finite=True)
    frames = drain(source)
    assert len(frames) == 6
    assert [f.pixels.shape for f in frames] == [(480, 640)] * 6
    assert frames[0].pixels is frames[2].pixels  # one image held in view
    assert not np.array_equal(frames[0].pixels, frames[3].pixels)
    assert all(a.at_ns < b.at_ns for a, b in itertools.pairwise(frames))


def test_frames_are_paced_at_the_frame_rate(tmp_path) -> None:
    write_badge(tmp_path / "a.png", "A")
    frames = drain(ImagesSource(tmp_path / "a.png", frames_per_image=5, fps=50))
    gaps = [b.at_ns - a.at_ns for a, b in itertools.pairwise(frames)]
    assert min(gaps) >= 15_000_000  # 20 ms apart, with slack for timer granularity


def test_a_missing_path_is_a_camera_error(tmp_path) -> None:
    with pytest.raises(CameraError, match="no such file or folder"):
        ImagesSource(tmp_path / "nope")


def test_a_followed_folder_shows_an_empty_view_then_new_images(tmp_path) -> None:
    write_badge(tmp_path / "01.png", "A")
    source = ImagesSource(tmp_path, frames_per_image=2, fps=500, follow=True)

    def next_frame() -> np.ndarray:
        with source.capture(timeout=1) as frame:
            return frame.pixels

    first = [next_frame() for _ in range(2)]
    empty = [next_frame() for _ in range(3)]  # everything shown: nobody in view
    assert all(not np.array_equal(first[0], e) for e in empty)
    assert all(np.array_equal(empty[0], e) for e in empty)
    write_badge(tmp_path / "02.png", "B")
    write_badge(tmp_path / "00.png", "old")  # sorts before what was shown: never shown
    shown = [next_frame() for _ in range(2)]
    assert not np.array_equal(shown[0], empty[0]) and np.array_equal(shown[0], shown[1])
    assert np.array_equal(next_frame(), empty[0])
    source.close()
