"""Frame sampling in one decode pass: evenly spaced frames plus the frames where the picture changes most."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: Rows of the luma thumbnail that scores motion between consecutive frames (about 160x90 at 16:9).
_MOTION_ROWS = 90


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
    diffs = np.abs(np.diff(small_frames.astype(np.int16), axis=0)).mean(axis=tuple(range(1, small_frames.ndim)))
    order = np.argsort(-diffs, kind="stable") + 1
    return [int(i) for i in order if int(i) not in exclude][:count]


class _TopMotion:
    """The `count` frames with the largest motion score seen so far, ties to the earlier frame (as motion_indices)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.heap: list[tuple[float, int, object]] = []  # (score, -index, frame): the weakest on top

    def offer(self, score: float, index: int, frame: object) -> None:
        item = (score, -index, frame)
        if len(self.heap) < self.count:
            heapq.heappush(self.heap, item)
        elif item[:2] > self.heap[0][:2]:
            heapq.heapreplace(self.heap, item)

    def frames(self) -> dict[int, object]:
        return {-neg: frame for _, neg, frame in self.heap}


def _luma_thumb(frame, step: int) -> np.ndarray:  # noqa: ANN001 - av.VideoFrame
    plane = frame.planes[0]
    luma = np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[: frame.height, : frame.width]
    return luma[::step, ::step].astype(np.int16)


def _open(path: Path):  # noqa: ANN202 - av.container.InputContainer
    import av

    if not path.is_file():
        raise ClipUnreadable(f"clip not found: {path}")
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except (av.error.FFmpegError, IndexError) as exc:
        raise ClipUnreadable(f"cannot decode {path.name}: {type(exc).__name__}: {str(exc)[:200]}") from exc
    stream.thread_type = "AUTO"  # frame threads: decode is the one CPU stage of a GPU analysis
    return container, stream


def _display_ranks(packets: list) -> dict[int, int] | None:  # noqa: ANN001 - av.Packet
    """Each shown packet's frame index in display order (its pts rank); None when they cannot say.

    None when a packet has no pts or two share one: frames are then all decoded and indexed in output
    order, as without skipping. Packets the container marks as discarded (priming frames an edit list
    cuts) are decoded, as others may be predicted from them, but never shown: they get no index.
    """
    stamps = [p.pts for p in packets if not p.is_discard]
    if any(pts is None for pts in stamps) or len(set(stamps)) != len(stamps):
        return None
    return {pts: rank for rank, pts in enumerate(sorted(stamps))}


def _decode(stream, packets: list, chosen: set[int], ranks: dict[int, int] | None):  # noqa: ANN001, ANN202
    """(index, frame) in display order; with `ranks`, non-reference frames not in `chosen` are not decoded.

    No other frame is predicted from a non-reference frame, so leaving one out costs nothing but its
    motion score; the setting is read per packet (frame threads copy it when a packet is submitted).
    Without `ranks` every frame is decoded and indexed in output order.
    """
    ctx = stream.codec_context
    ctx.flush_buffers()  # a second pass starts from a clean decoder
    output = 0
    for packet in [*packets, None]:  # None drains the decoder
        index = ranks.get(packet.pts) if ranks is not None and packet is not None else None
        ctx.skip_frame = "NONREF" if index is not None and index not in chosen else "DEFAULT"
        for frame in ctx.decode(packet):
            yield (ranks.get(frame.pts) if ranks is not None else output), frame
            output += 1


def _scan(stream, packets: list, chosen: set[int], motion: int, ranks: dict | None) -> tuple[dict, int]:  # noqa: ANN001
    """One decode pass: the chosen and the `motion` strongest motion frames by index, and the frames decoded."""
    top = _TopMotion(motion)
    kept, previous, last, decoded = {}, None, -1, 0
    step = max(1, (stream.codec_context.height or _MOTION_ROWS) // _MOTION_ROWS)
    for index, frame in _decode(stream, packets, chosen, ranks):
        decoded += 1
        if index is None:  # a frame whose time stamp no packet had: its place is unknown
            continue
        if index in chosen:
            kept[index] = frame
        thumb = _luma_thumb(frame, step) if top.count else None
        if previous is not None and index not in chosen:
            # Mean change per frame since the last decoded one (a skipped frame's change lands here).
            top.offer(float(np.abs(thumb - previous).mean()) / max(1, index - last), index, frame)
        previous, last = thumb, index
    kept.update(top.frames())
    return kept, decoded


def sample_frames(path: Path, max_frames: int = 12, even: int = 8) -> SampledFrames:
    """Decode a clip once: keep the evenly spaced frames and the strongest motion frames, convert only those.

    Motion is the mean absolute luma difference per frame between consecutive decoded frames on a
    ~90-row thumbnail, read straight from the decoded YUV planes, so only the frames returned are
    converted to RGB. Non-reference frames (most B-frames) are not decoded unless they are evenly spaced
    ones: motion is scored on the frames that are.

    Args:
        path: the clip.
        max_frames: cap on frames returned.
        even: how many of them are evenly spaced; the rest are motion-delta frames.

    Raises:
        ClipUnreadable: missing or undecodable file, or a clip with no frames.
    """
    import av

    t0 = time.perf_counter()
    container, stream = _open(path)
    with container:
        try:
            packets = [p for p in container.demux(stream) if p.size]
            expected = stream.frames if stream.frames > 0 else len(packets)
            chosen = set(even_indices(expected, min(even, max_frames)))
            motion = max(0, max_frames - len(chosen))
            ranks = _display_ranks(packets)
            kept, decoded = _scan(stream, packets, chosen, motion, ranks)
            count = len(ranks) if ranks is not None else decoded
            if ranks is not None and not chosen <= set(kept):  # a decoder that did not play along
                kept, decoded = _scan(stream, packets, chosen, motion, None)
                count = decoded
        except av.error.FFmpegError as exc:
            raise ClipUnreadable(f"cannot decode frames of {path.name}: {exc}") from exc
    if decoded == 0:
        raise ClipUnreadable(f"clip has no frames: {path}")
    fps = float(stream.average_rate or 0)
    indices = sorted(i for i in kept if i < count)
    frames = np.stack([kept[i].to_ndarray(format="rgb24") for i in indices])
    height, width = frames.shape[1:3]
    return SampledFrames(indices, frames, fps, count, width, height, (time.perf_counter() - t0) * 1000)
