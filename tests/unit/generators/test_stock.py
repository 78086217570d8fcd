"""Stock media: face crops, stock URIs and per-location backgrounds."""

from __future__ import annotations

import hashlib
import itertools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.unit.generators.conftest import MATCH_DISTANCE
from vidpipe_tasks.generators import stock

REPO_ROOT = Path(__file__).resolve().parents[3]


def test_there_are_eight_stock_faces_and_the_pools_partition_them_without_overlap() -> None:
    assert stock.STOCK_FACES == ("t1-0", "t1-1", "t1-2", "t1-3", "t1-4", "t1-5", "tom-hanks", "astronaut")
    assert set(stock.INVENTED_FACE_POOL) <= set(stock.STOCK_FACES)
    assert not set(stock.INVENTED_FACE_POOL) & set(stock.EXAMPLE_REFERENCE_FACES)
    assert stock.EXAMPLE_REFERENCE_FACES == ("t1-0", "t1-1", "t1-2")


@pytest.mark.parametrize("name", stock.STOCK_FACES)
def test_each_stock_face_is_a_roughly_square_rgb_head_crop_with_the_face_near_the_centre(name: str) -> None:
    image = stock.stock_face(name)
    assert image.mode == "RGB"
    assert abs(image.width - image.height) <= 2
    left, top, right, bottom = stock.stock_face_box(name)
    # Generous crop: the face box covers roughly half the crop and sits in its middle.
    assert 0.4 < (right - left) / image.width < 0.7
    assert abs((left + right) / 2 - image.width / 2) < 0.1 * image.width


def test_stock_face_returns_a_fresh_image_each_call() -> None:
    first = stock.stock_face("t1-0")
    first.paste((0, 0, 0), (0, 0, first.width, first.height))
    assert np.asarray(stock.stock_face("t1-0")).max() > 0


def test_each_stock_face_crop_contains_exactly_one_face_where_its_box_says(face_engine) -> None:
    for name in stock.STOCK_FACES:
        face = face_engine.single_face(np.asarray(stock.stock_face(name)))
        assert max(abs(a - b) for a, b in zip(face.box, stock.stock_face_box(name), strict=True)) <= 3, name


def test_all_stock_faces_are_different_people(face_engine) -> None:
    descriptors = {name: face_engine.single_face(np.asarray(stock.stock_face(name))) for name in stock.STOCK_FACES}
    too_close = [
        (a, b, round(descriptors[a].distance(descriptors[b]), 3))
        for a, b in itertools.combinations(stock.STOCK_FACES, 2)
        if descriptors[a].distance(descriptors[b]) < MATCH_DISTANCE
    ]
    assert too_close == []


def test_unknown_stock_face_names_give_a_value_error_listing_the_valid_names() -> None:
    with pytest.raises(ValueError, match="unknown stock face 'nobody'.*t1-0.*astronaut"):
        stock.stock_face("nobody")
    with pytest.raises(ValueError, match="valid names: .*tom-hanks"):
        stock.resolve_stock_uri("stock:face/nobody")


def test_stock_uris_resolve_to_stock_faces_and_other_strings_are_rejected() -> None:
    assert stock.is_stock_uri("stock:face/t1-2")
    assert not stock.is_stock_uri("/data/refs/t1-2.png")
    assert not stock.is_stock_uri(None)
    resolved = stock.resolve_stock_uri("stock:face/t1-2")
    assert np.array_equal(np.asarray(resolved), np.asarray(stock.stock_face("t1-2")))
    for bad in ("stock:background/coffee", "face/t1-2", "stock:face/"):
        with pytest.raises(ValueError, match="t1-0"):
            stock.resolve_stock_uri(bad)


def test_backgrounds_are_deterministic_per_location_and_have_the_requested_shape() -> None:
    first = stock.background_for("Kitchen", 320, 180)
    assert first.shape == (180, 320, 3) and first.dtype == np.uint8
    assert np.array_equal(first, stock.background_for("Kitchen", 320, 180))
    # Case and spacing do not make a different place.
    assert np.array_equal(first, stock.background_for("  kitchen ", 320, 180))
    assert stock.background_for(None, 64, 48).shape == (48, 64, 3)
    assert np.array_equal(stock.background_for(None, 64, 48), stock.background_for("", 64, 48))


def test_different_locations_spread_over_several_backgrounds() -> None:
    names = {stock.background_name_for(f"location {i}") for i in range(40)}
    assert len(names) >= 6
    assert names <= set(stock.STOCK_BACKGROUNDS)


def test_backgrounds_do_not_depend_on_the_process_hash_seed() -> None:
    code = (
        "import hashlib\n"
        "from vidpipe_tasks.generators.stock import background_for\n"
        "print(hashlib.sha256(background_for('rooftop bar', 96, 54).tobytes()).hexdigest())\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-c", code]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True, cwd=REPO_ROOT)
    assert out.stdout.strip() == hashlib.sha256(stock.background_for("rooftop bar", 96, 54).tobytes()).hexdigest()


def test_no_background_contains_a_detectable_face(face_engine) -> None:
    for name in stock.STOCK_BACKGROUNDS:
        location = next(f"place {i}" for i in range(10_000) if stock.background_name_for(f"place {i}") == name)
        assert face_engine.faces(stock.background_for(location, 640, 360)) == [], name


def test_background_for_rejects_an_empty_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        stock.background_for("kitchen", 0, 10)
