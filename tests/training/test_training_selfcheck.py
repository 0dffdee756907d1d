"""The self-check's acceptance bars and sample grid."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hgc_tune.data._shapes import render_scene
from training.shapes.selfcheck import ACCEPTANCE, grid_image, vae_reconstruction


@pytest.mark.parametrize(
    ("condition", "with_control", "dropped", "passes"),
    [
        ("seg", 0.6, 0.3, True),
        ("seg", 0.45, 0.2, False),  # below the 0.5 floor
        ("seg", 0.55, 0.3, False),  # under 2x dropped
        ("canny", 0.4, 0.2, True),
        ("canny", 0.39, 0.2, False),
        ("hed", 0.31, 0.2, True),
        ("hed", 0.29, 0.2, False),
        ("depth", 0.1, 0.2, True),
        ("depth", 0.11, 0.2, False),
    ],
)
def test_acceptance_bars(condition, with_control, dropped, passes):
    assert ACCEPTANCE[condition].passes(with_control, dropped) is passes


def test_grid_image_tiles_rows_upscaled():
    a = np.zeros((4, 4, 3), dtype=np.uint8)
    b = np.full((4, 4, 3), 200, dtype=np.uint8)
    grid = grid_image([[a, b], [b, a]], scale=2, gap=1)
    assert grid.shape == (2 * 8 + 3, 2 * 8 + 3, 3)
    assert (grid[1:9, 1:9] == 0).all() and (grid[1:9, 10:18] == 200).all()
    assert (grid[0] == 255).all()


class _FakeVae:
    """Encodes a picture as itself; decodes it through ``decode`` (identity: a perfect VAE)."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self, decode=lambda z: z):
        self._decode = decode

    def encode(self, x):
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=x))

    def decode(self, z):
        return SimpleNamespace(sample=self._decode(z))


def test_vae_reconstruction_reads_the_decoded_pictures_with_the_seg_metric():
    scenes = [render_scene(seed, size=64) for seed in (1, 2, 3)]
    perfect = vae_reconstruction(_FakeVae(), scenes)
    assert perfect["samples"] == 3 and perfect["metric"] == "miou"
    assert perfect["ground_truth"] > 0.9
    assert perfect["reconstruction"] == pytest.approx(perfect["ground_truth"], abs=1e-6)
    # a decoder that loses the colours (every picture grey) keeps the background only
    grey = vae_reconstruction(_FakeVae(torch.zeros_like), scenes)
    assert grey["reconstruction"] < 0.6 and grey["ground_truth"] == perfect["ground_truth"]
