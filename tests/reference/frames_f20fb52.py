"""Frozen copy of frame sampling at f20fb52 (decord, a full motion probe, then a seek for the chosen frames)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Side of the low-resolution pass that scores motion between consecutive frames.
_MOTION_PROBE = (160, 90)


class ClipUnreadable(ValueError):
    """The clip is missing or cannot be decoded."""


@dataclass(frozen=True)
class SampledFrames:
    """Decoded RGB frames of one clip and where they came from."""

    indices: list[int]
    frames: np.ndarray
    fps: float
    frame_count: int
    width: int
    height: int
    decode_ms: float


def even_indices(frame_count: int, count: int) -> list[int]:
    """`count` indices spread over the clip, centred in equal slices."""
    if frame_count <= 0:
        return []
    count = min(count, frame_count)
    return sorted({int((i + 0.5) * frame_count / count) for i in range(count)})


def motion_indices(small_frames: np.ndarray, count: int, exclude: set[int]) -> list[int]:
    """Indices of the frames that differ most from their predecessor (new poses, entrances, cuts)."""
    if count <= 0 or len(small_frames) < 2:
        return []
    diffs = np.abs(np.diff(small_frames.astype(np.int16), axis=0)).mean(axis=(1, 2, 3))
    order = np.argsort(-diffs, kind="stable") + 1
    return [int(i) for i in order if int(i) not in exclude][:count]


def _open(path: Path, **size):  # noqa: ANN202 - decord.VideoReader
    from decord import VideoReader, cpu

    if not path.is_file():
        raise ClipUnreadable(f"clip not found: {path}")
    try:
        return VideoReader(str(path), ctx=cpu(0), **size)
    except Exception as exc:  # decord raises its own DECORDError / RuntimeError on garbage
        raise ClipUnreadable(f"cannot decode {path.name}: {type(exc).__name__}: {str(exc)[:200]}") from exc


def sample_frames(path: Path, max_frames: int = 12, even: int = 8) -> SampledFrames:
    """Decode a clip once at full size for the chosen indices.

    Args:
        path: the clip.
        max_frames: cap on frames returned.
        even: how many of them are evenly spaced; the rest are motion-delta frames.

    Raises:
        ClipUnreadable: missing or undecodable file, or a clip with no frames.
    """
    t0 = time.perf_counter()
    reader = _open(path)
    frame_count = len(reader)
    if frame_count == 0:
        raise ClipUnreadable(f"clip has no frames: {path}")
    chosen = even_indices(frame_count, min(even, max_frames))
    extra = max_frames - len(chosen)
    if extra > 0 and frame_count > len(chosen):
        probe = _open(path, width=_MOTION_PROBE[0], height=_MOTION_PROBE[1])
        small = probe.get_batch(list(range(frame_count))).asnumpy()
        chosen = sorted(set(chosen) | set(motion_indices(small, extra, set(chosen))))
    try:
        frames = reader.get_batch(chosen).asnumpy()
    except Exception as exc:
        raise ClipUnreadable(f"cannot decode frames of {path.name}: {exc}") from exc
    height, width = frames.shape[1:3]
    return SampledFrames(
        chosen, frames, float(reader.get_avg_fps()), frame_count, width, height, (time.perf_counter() - t0) * 1000
    )
