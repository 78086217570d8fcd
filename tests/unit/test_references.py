"""Reference images: only from the storyboard's folder or allowed roots, decoded and verified at validation."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import pytest
import yaml
from PIL import Image

from vidpipe_tasks.inputs import load_inputs
from vidpipe_tasks.limits import InputLimits
from vidpipe_tasks.storyboard import StoryboardError

FIELD = "manifest.asset 1.reference_image"


def board_with(folder: Path, reference: str) -> Path:
    data = {
        "title": "Refs",
        "manifest": {
            "name": "m",
            "assets": [{"type": "character", "tag": "ana", "name": "Ana", "reference_image": reference}],
        },
        "scenes": [{"description": "Ana.", "characters": ["ana"]}],
    }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "board.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def face(path: Path, size: tuple[int, int] = (48, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 150, 120)).save(path)
    return path


def refused(board: Path, limits: InputLimits | None = None) -> str:
    with pytest.raises(StoryboardError) as caught:
        load_inputs([board], limits)
    ((file, field, reason),) = caught.value.problems
    assert (file, field) == (str(board), FIELD)
    return reason


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels but which carries a few bytes of data (a bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def test_a_relative_reference_inside_the_storyboard_folder_is_accepted(tmp_path: Path) -> None:
    face(tmp_path / "story" / "faces" / "ana.png")
    (board,) = load_inputs([board_with(tmp_path / "story", "faces/ana.png")])
    assert board.board.manifest.assets[0].reference_image == "faces/ana.png"


def test_an_absolute_reference_is_refused(tmp_path: Path) -> None:
    secret = face(tmp_path / "elsewhere" / "secret.png")
    assert "an absolute path" in refused(board_with(tmp_path / "story", str(secret)))


def test_a_dotdot_reference_escaping_the_folder_is_refused(tmp_path: Path) -> None:
    face(tmp_path / "elsewhere" / "secret.png")
    reason = refused(board_with(tmp_path / "story", "../elsewhere/secret.png"))
    assert "outside the storyboard's folder" in reason


def test_a_symlink_inside_the_folder_pointing_outside_is_refused(tmp_path: Path) -> None:
    secret = face(tmp_path / "elsewhere" / "secret.png")
    board = board_with(tmp_path / "story", "innocent.png")
    (tmp_path / "story" / "innocent.png").symlink_to(secret)
    assert "after resolving symlinks" in refused(board)


def test_references_under_an_allowed_root_are_accepted_absolute_or_through_a_symlink(tmp_path: Path) -> None:
    shared = face(tmp_path / "library" / "ana.png")
    limits = InputLimits(reference_roots=((tmp_path / "library").resolve(),))
    assert load_inputs([board_with(tmp_path / "a", str(shared))], limits)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "ana.png").symlink_to(shared)
    assert load_inputs([board_with(tmp_path / "b", "ana.png")], limits)
    assert "VIDPIPE_REFERENCE_ROOTS" in refused(board_with(tmp_path / "c", str(shared)))


def test_a_device_or_folder_reference_is_refused(tmp_path: Path) -> None:
    limits = InputLimits(reference_roots=(Path("/dev"),))
    assert "not a regular file" in refused(board_with(tmp_path / "story", "/dev/zero"), limits)
    (tmp_path / "story" / "faces").mkdir()
    assert "not a regular file" in refused(board_with(tmp_path / "story", "faces"))


def test_a_non_image_reference_is_refused(tmp_path: Path) -> None:
    board = board_with(tmp_path / "story", "notes.png")
    (tmp_path / "story" / "notes.png").write_text("these are my notes, not a face\n")
    assert "not an image in an accepted format" in refused(board)


def test_a_corrupt_reference_is_refused(tmp_path: Path) -> None:
    board = board_with(tmp_path / "story", "ana.png")
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    data[60:80] = b"\xff" * 20  # inside the image data: the CRC no longer matches
    (tmp_path / "story" / "ana.png").write_bytes(bytes(data))
    assert "corrupt or truncated" in refused(board)


def test_a_truncated_reference_is_refused(tmp_path: Path) -> None:
    board = board_with(tmp_path / "story", "ana.jpg")
    buf = io.BytesIO()
    Image.effect_noise((256, 256), 60).convert("RGB").save(buf, format="JPEG")
    (tmp_path / "story" / "ana.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    assert "corrupt or truncated" in refused(board)


def test_a_decompression_bomb_is_refused_from_its_header(tmp_path: Path) -> None:
    board = board_with(tmp_path / "story", "bomb.png")
    (tmp_path / "story" / "bomb.png").write_bytes(png_claiming(100_000, 100_000))
    assert "more than 40000000 pixels (VIDPIPE_MAX_REFERENCE_PIXELS)" in refused(board)


def test_reference_size_and_pixel_limits_are_settings(tmp_path: Path) -> None:
    face(tmp_path / "story" / "ana.png", (40, 40))
    board = board_with(tmp_path / "story", "ana.png")
    assert "VIDPIPE_MAX_REFERENCE_PIXELS" in refused(board, InputLimits(max_reference_pixels=1000))
    assert "VIDPIPE_MAX_REFERENCE_BYTES" in refused(board, InputLimits(max_reference_bytes=10))
    assert load_inputs([board], InputLimits(max_reference_pixels=1600))


def test_every_bad_reference_of_a_batch_is_one_line_naming_file_and_field(tmp_path: Path) -> None:
    from tests.helpers import run_vidpipe

    bomb = board_with(tmp_path / "one", "bomb.png")
    (tmp_path / "one" / "bomb.png").write_bytes(png_claiming(60_000, 60_000))
    escape = board_with(tmp_path / "two", "../one/bomb.png")
    result = run_vidpipe(tmp_path / "work", "submit", str(bomb), str(escape))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "invalid storyboard(s); nothing was queued:"
    assert [line.split(": ")[:2] for line in lines[1:]] == [[f"  {bomb}", FIELD], [f"  {escape}", FIELD]]
