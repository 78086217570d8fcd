"""What remote generators are sent for a scene: the prompt text, the reference board and the first frame."""

from __future__ import annotations

import io
import json
from pathlib import Path

from vidpipe_tasks.generators.base import ClipRequest

#: PNG text key under which the reference board records each reference's box (the fakes read it; models
#: see only the pixels).
BOARD_KEY = "vidpipe-board"
#: Height of each reference on the board, pixels.
BOARD_CELL_H = 512


def referenced(request: ClipRequest) -> list[tuple[str, Path]]:
    """(tag, image) of the request's characters that have a reference image, in request order."""
    return [(c.tag, Path(c.reference_image)) for c in request.characters if c.reference_image is not None]


def scene_prompt(request: ClipRequest) -> str:
    """The positive prompt: the scene description, then who is in it and where each one's look comes from.

    Characters with a reference are numbered in the order of the reference images sent; the others are
    left to the generator to invent (and analysis registers them for the next scene).
    """
    refs = [tag for tag, _ in referenced(request)]
    parts = []
    for c in request.characters:
        if c.tag in refs:
            parts.append(f"{c.tag} (reference {refs.index(c.tag) + 1} of {len(refs)})")
        else:
            parts.append(f"{c.tag} (no reference)")
    text = request.description.strip().rstrip(".") + "."
    if request.location:
        text += f" Location: {request.location}."
    if parts:
        text += " Characters: " + ", ".join(parts) + "."
    return text


def negative_prompt(request: ClipRequest) -> str:
    return str(request.extra.get("negative_prompt") or "")


def first_frame(request: ClipRequest) -> Path | None:
    """The start image chained from the previous scene's last frame, when first-frame chaining is on."""
    value = request.extra.get("first_frame")
    return Path(value) if value else None


def png_bytes(path: Path) -> bytes:
    """An image file re-encoded as RGB PNG (what both providers accept)."""
    from PIL import Image

    with Image.open(path) as img:
        buf = io.BytesIO()
        img.convert("RGB").save(buf, format="PNG")
        return buf.getvalue()


def reference_board(request: ClipRequest) -> bytes | None:
    """The scene's reference images side by side at one height, as PNG; None without references.

    Image-to-video models take one start image: the board is how every selected reference reaches them.
    Each reference's box is recorded in the PNG's text chunk under BOARD_KEY.
    """
    from PIL import Image, PngImagePlugin

    refs = referenced(request)
    if not refs:
        return None
    images = []
    for _, path in refs:
        with Image.open(path) as img:
            img = img.convert("RGB")
            scale = BOARD_CELL_H / img.height
            images.append(img.resize((max(2, round(img.width * scale)), BOARD_CELL_H)))
    board = Image.new("RGB", (sum(i.width for i in images), BOARD_CELL_H), (128, 128, 128))
    boxes, x = [], 0
    for img in images:
        board.paste(img, (x, 0))
        boxes.append([x, 0, x + img.width, BOARD_CELL_H])
        x += img.width
    info = PngImagePlugin.PngInfo()
    info.add_text(BOARD_KEY, json.dumps({"boxes": boxes, "tags": [t for t, _ in refs]}))
    buf = io.BytesIO()
    board.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def start_image(request: ClipRequest) -> bytes | None:
    """The start image: the chained first frame if there is one, else the reference board."""
    frame = first_frame(request)
    if frame is not None and frame.is_file():
        return png_bytes(frame)
    return reference_board(request)
