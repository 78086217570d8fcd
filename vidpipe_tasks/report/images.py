"""Pictures for the report: sampled frames decoded again from the clip (PyAV), images as data: URIs."""

from __future__ import annotations

import base64
import io
from pathlib import Path

from PIL import Image

from vidpipe_tasks import media

#: Width of the frames and thumbnails inlined in the page (the boxes are drawn in percent, so any width works).
FRAME_WIDTH = 272
THUMB_WIDTH = 96


def decode_frames(path: Path, indices: list[int]) -> dict[int, Image.Image]:
    """The frames of a clip at these decode-order indices (the analysis numbers frames the same way).

    Raises:
        ValueError: the clip cannot be opened or decoded.

    """
    import av

    wanted, found = set(indices), {}
    if not wanted:
        return {}
    try:
        with av.open(str(path)) as container:
            for index, frame in enumerate(container.decode(container.streams.video[0])):
                if index in wanted:
                    found[index] = frame.to_image()
                if index >= max(wanted):
                    break
    except (av.error.FFmpegError, IndexError, OSError) as exc:
        raise ValueError(f"cannot decode {path.name}: {exc}") from exc
    return found


def data_uri(image: Image.Image, width: int, fmt: str = "JPEG") -> str:
    """The image scaled to `width` (never up), encoded inline."""
    if image.width > width:
        image = image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format=fmt, quality=82)
    mime = "jpeg" if fmt == "JPEG" else fmt.lower()
    return f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def file_uri(media_root: Path, relative: str, width: int = THUMB_WIDTH) -> str | None:
    """A media file (reference image, crop) inlined as a PNG thumbnail; None if it is missing or refused."""
    try:
        with Image.open(media.absolute(media_root, relative)) as img:
            return data_uri(img, width, "PNG")
    except (ValueError, OSError):
        return None
