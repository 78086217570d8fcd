"""Reference images named by a storyboard: where they may come from, and decoding them with limits."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from vidpipe_tasks.limits import InputLimits

if TYPE_CHECKING:
    from PIL import Image

#: Image formats a reference may be in (PIL names); anything else is refused before a decoder runs.
REFERENCE_FORMATS = ("PNG", "JPEG", "WEBP", "BMP")


class ReferenceRefused(ValueError):
    """A reference image is refused; the message is the reason, one line."""


def resolve_reference(base: Path, ref: str, roots: tuple[Path, ...] = ()) -> Path:
    """The file a storyboard's `reference_image` names, after symlinks are resolved.

    A relative path is taken from the storyboard's folder `base`. The resolved file must lie inside
    `base` or inside one of the allowed `roots` (VIDPIPE_REFERENCE_ROOTS); an absolute path is accepted
    only under a root. So neither `..`, an absolute path nor a symlink reaches a file elsewhere.

    Raises:
        ReferenceRefused: the path is outside every allowed folder, or names no regular file.

    """
    if "\x00" in ref:
        raise ReferenceRefused("path contains a NUL character")
    raw = Path(ref)
    folder = base.resolve()
    try:
        target = (folder / raw).resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise ReferenceRefused(f"cannot resolve path: {exc}") from None
    inside_folder = not raw.is_absolute() and target.is_relative_to(folder)
    if not inside_folder and not any(target.is_relative_to(root) for root in roots):
        outside = "outside the storyboard's folder (after resolving symlinks)"
        where = "an absolute path" if raw.is_absolute() else outside
        raise ReferenceRefused(f"{where} and not under VIDPIPE_REFERENCE_ROOTS: {ref}")
    if not target.exists():
        raise ReferenceRefused(f"file not found: {base / ref}")
    if not target.is_file():
        raise ReferenceRefused(f"not a regular file: {base / ref}")
    return target


def open_verified(path: Path, limits: InputLimits) -> Image.Image:
    """Decode an image completely, within the size and pixel limits; the caller closes it.

    The pixel count is checked from the header before any pixel is decoded, so a decompression bomb
    never reaches the decoder; a corrupt or truncated file fails here, at validation, not in a worker.

    Raises:
        ReferenceRefused: too large, not an image of an accepted format, corrupt or truncated.

    """
    from PIL import Image, UnidentifiedImageError

    size = path.stat().st_size
    if size > limits.max_reference_bytes:
        raise ReferenceRefused(
            f"{size} bytes is more than the limit of {limits.max_reference_bytes} (VIDPIPE_MAX_REFERENCE_BYTES)"
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own pixel limit decides
            with Image.open(path, formats=REFERENCE_FORMATS) as probe:
                _check_pixels(probe.size, limits)
                probe.verify()
            img = Image.open(path, formats=REFERENCE_FORMATS)
            try:
                img.load()
            except BaseException:
                img.close()
                raise
    except ReferenceRefused:
        raise
    except UnidentifiedImageError:
        raise ReferenceRefused(f"not an image in an accepted format ({', '.join(REFERENCE_FORMATS)})") from None
    except Image.DecompressionBombError:
        limit = limits.max_reference_pixels
        raise ReferenceRefused(f"image of more than {limit} pixels (VIDPIPE_MAX_REFERENCE_PIXELS)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # PIL's ways of saying corrupt or truncated
        raise ReferenceRefused(f"corrupt or truncated image: {exc}") from None
    return img


def _check_pixels(size: tuple[int, int], limits: InputLimits) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ReferenceRefused(f"image has no pixels ({width}x{height})")
    if width * height > limits.max_reference_pixels:
        raise ReferenceRefused(
            f"{width}x{height} is more than {limits.max_reference_pixels} pixels (VIDPIPE_MAX_REFERENCE_PIXELS)"
        )


def reference_problem(base: Path, ref: str, limits: InputLimits) -> str | None:
    """Why a storyboard's file reference would be refused, or None when it resolves and decodes."""
    try:
        with open_verified(resolve_reference(base, ref, limits.reference_roots), limits):
            return None
    except ReferenceRefused as exc:
        return str(exc)
