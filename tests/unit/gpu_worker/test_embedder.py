"""The open_clip embedder's real loading and embedding code on a tiny random-weights model, offline."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from gpu_worker.embedder import (
    STAGING_HINT,
    ClipEmbedder,
    EmbedderUnavailable,
    mean_embedding,
    weights_problems,
)
from gpu_worker.faces.base import EngineUnavailable
from tests.tiny_clip import TINY_CLIP_DIM, write_tiny_clip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path, Path]:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


def make_embedder(tiny: tuple[str, Path, Path], **kwargs) -> ClipEmbedder:
    name, config_dir, weights = tiny
    kwargs.setdefault("device", "cpu")
    return ClipEmbedder(name, weights, config_dir=config_dir, **kwargs)


@pytest.fixture(scope="module")
def embedder(tiny) -> ClipEmbedder:
    embedder = make_embedder(tiny)
    embedder.load()
    return embedder


@pytest.fixture(scope="module")
def pictures() -> list[np.ndarray]:
    """Real photographs of different sizes that ship with scikit-image."""
    from skimage import data

    return [data.coffee(), data.chelsea(), data.astronaut(), data.rocket()]


def test_it_loads_the_staged_local_weights_without_the_network_and_reports_cpu_float32(tiny, monkeypatch) -> None:
    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: attempts.append(address))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    embedder = make_embedder(tiny)
    assert embedder.model is None and embedder.dim is None  # the constructor loads nothing

    embedder.load()

    assert attempts == []
    assert embedder.model is not None
    assert embedder.name == "open_clip:vidpipe-tiny-test"
    assert (embedder.device, embedder.dtype, embedder.dim) == ("cpu", "float32", TINY_CLIP_DIM)
    import os

    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_missing_weights_raise_embedder_unavailable_naming_the_path_and_the_staging_command(tmp_path) -> None:
    missing = tmp_path / "models" / "open_clip" / "ViT-B-32.pt"
    embedder = ClipEmbedder("ViT-B-32", missing, device="cpu")

    with pytest.raises(EmbedderUnavailable) as raised:
        embedder.load()

    assert str(missing) in str(raised.value)
    assert STAGING_HINT in str(raised.value)
    assert isinstance(raised.value, EngineUnavailable)
    assert embedder.model is None


def test_weights_problems_are_empty_only_for_a_non_empty_file(tmp_path, tiny) -> None:
    empty = tmp_path / "empty.pt"
    empty.touch()
    assert weights_problems(tiny[2]) == []
    assert weights_problems(None)
    assert str(tmp_path / "nope.pt") in weights_problems(tmp_path / "nope.pt")[0]
    assert "not a file" in weights_problems(tmp_path)[0]
    assert "empty" in weights_problems(empty)[0]


def test_a_file_that_is_not_a_state_dict_raises_embedder_unavailable_with_the_staging_command(tmp_path, tiny) -> None:
    name, config_dir, _ = tiny
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a torch checkpoint")
    embedder = ClipEmbedder(name, broken, device="cpu", config_dir=config_dir)

    with pytest.raises(EmbedderUnavailable, match="broken.pt") as raised:
        embedder.load()

    assert STAGING_HINT in str(raised.value)


def test_embeddings_have_one_float32_unit_row_of_embed_dim_per_image(embedder, pictures) -> None:
    vectors = embedder.embed(pictures)

    assert vectors.shape == (len(pictures), TINY_CLIP_DIM)
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_images_of_different_sizes_and_shapes_are_accepted(embedder) -> None:
    rng = np.random.default_rng(1)
    sizes = [(7, 5), (32, 32), (90, 60), (360, 640), (1080, 1920)]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]
    # A face crop is often a view into its frame, not a contiguous array.
    images.append(images[-1][100:300:2, 400:700])

    vectors = embedder.embed(images)

    assert vectors.shape == (len(images), TINY_CLIP_DIM)
    assert np.isfinite(vectors).all()


def test_an_image_that_is_not_rgb_uint8_is_refused(embedder) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        embedder.embed([np.zeros((32, 32), dtype=np.uint8)])
    with pytest.raises(ValueError, match="RGB uint8"):
        embedder.embed([np.zeros((32, 32, 3), dtype=np.float32)])


def test_the_model_receives_batches_no_larger_than_batch_size(tiny, pictures, monkeypatch) -> None:
    embedder = make_embedder(tiny, batch_size=3)
    embedder.load()
    batches = []
    encode = embedder.model.encode_image

    def spy(pixels, *args, **kwargs):
        batches.append(tuple(pixels.shape))
        return encode(pixels, *args, **kwargs)

    monkeypatch.setattr(embedder.model, "encode_image", spy)
    images = (pictures * 2)[:7]

    vectors = embedder.embed(images)

    assert [b[0] for b in batches] == [3, 3, 1]
    assert all(b[1:] == (3, 32, 32) for b in batches)  # the model's own preprocessing: 3 channels at its size
    assert vectors.shape == (7, TINY_CLIP_DIM)


def test_batching_does_not_change_the_embeddings(tiny, embedder, pictures) -> None:
    one_at_a_time = make_embedder(tiny, batch_size=1)

    np.testing.assert_allclose(one_at_a_time.embed(pictures), embedder.embed(pictures), atol=1e-5)


def test_the_same_image_twice_gives_identical_rows_and_different_images_give_different_rows(embedder, pictures) -> None:
    coffee, cat = pictures[0], pictures[1]

    vectors = embedder.embed([coffee, cat, coffee.copy()])

    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert float(vectors[0] @ vectors[1]) < 0.999
    assert not np.allclose(vectors[0], vectors[1], atol=1e-3)


def test_empty_input_gives_zero_rows_of_embed_dim(embedder) -> None:
    vectors = embedder.embed([])

    assert vectors.shape == (0, TINY_CLIP_DIM)
    assert vectors.dtype == np.float32


def test_embedding_time_accumulates_in_timings(tiny, pictures) -> None:
    embedder = make_embedder(tiny)
    embedder.embed(pictures[:1])
    first = embedder.timings_ms["image_embed"]
    embedder.embed(pictures[:2])

    assert 0 < first < embedder.timings_ms["image_embed"]


def test_the_loaded_weights_are_the_staged_ones_not_a_fresh_random_init(tiny, embedder) -> None:
    import torch

    staged = torch.load(tiny[2], weights_only=True)
    loaded = embedder.model.state_dict()
    random = make_embedder(tiny, random_weights=True)
    random.load()

    assert loaded.keys() == staged.keys()
    for key in ("visual.conv1.weight", "visual.proj", "visual.transformer.resblocks.1.mlp.c_fc.weight"):
        assert torch.equal(loaded[key], staged[key]), key
    assert not torch.equal(random.model.state_dict()["visual.conv1.weight"], staged["visual.conv1.weight"])


def test_random_weights_need_no_weights_file(tiny) -> None:
    name, config_dir, _ = tiny
    embedder = ClipEmbedder(name, None, device="cpu", config_dir=config_dir, random_weights=True)

    assert embedder.embed([np.zeros((40, 40, 3), dtype=np.uint8)]).shape == (1, TINY_CLIP_DIM)


def test_asking_for_cuda_on_a_host_without_cuda_raises_embedder_unavailable(tiny) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this host has CUDA; the refusal only happens without it")
    embedder = make_embedder(tiny, device="cuda")

    with pytest.raises(EmbedderUnavailable, match="CUDA is not available"):
        embedder.load()
    assert embedder.model is None and embedder.device is None


def test_mean_embedding_is_the_renormalised_mean_and_none_for_no_vectors() -> None:
    vectors = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], dtype=np.float32)

    mean = mean_embedding(vectors)

    np.testing.assert_allclose(mean, [2**-0.5, 2**-0.5, 0.0], atol=1e-6)
    assert mean.dtype == np.float32
    assert mean_embedding(np.zeros((0, 3), dtype=np.float32)) is None


def test_the_mean_embedding_of_one_repeated_frame_is_that_frame(embedder, pictures) -> None:
    frame = embedder.embed(pictures[:1])[0]

    np.testing.assert_allclose(mean_embedding(np.stack([frame, frame, frame])), frame, atol=1e-6)
