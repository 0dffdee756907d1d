"""`hgc-tune profile` end to end on the tiny preset and the generated shapes benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hgc_tune.cli import main
from hgc_tune.profile import Profile


@pytest.fixture
def one_thread():
    # On a shared, busy CPU two OpenMP threads made the tiny pipeline 5-20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_profile_command_writes_a_loadable_profile(tmp_path, monkeypatch, capsys, one_thread):
    monkeypatch.setenv("HGC_TUNE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "runs" / "tiny-seg"
    argv = ["profile", "--model", "tiny", "--dataset", "shapes", "--condition", "seg", "--samples", "2"]
    argv += ["--steps", "3", "--seed", "5", "--out", str(out), "--no-progress", "--json"]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["samples"] == 2 and summary["steps"] == 3 and summary["out"] == str(out)

    profile = Profile.load(out)
    assert profile.condition_type == "seg" and profile.model_name == "tiny"
    assert profile.num_steps == 3 and profile.resolution == (64, 64)
    meta = profile.meta
    assert meta["dataset"]["name"] == "shapes:calibration"
    assert len(meta["dataset"]["content_hash"]) == 64
    assert profile.reference_images.shape == (2, 64, 64, 3)
    assert np.isfinite(profile.stat("mean_rel_l1", "controlnet")[1:]).all()
    # A shapes seg map is mostly flat colour regions, unlike noise: the stored condition is the real one.
    assert len(np.unique(profile.condition_images[0].reshape(-1, 3), axis=0)) < 64

    # An existing profile is not replaced without --overwrite.
    assert main(argv) == 2
    assert "profile.json' (a profile) already exists; pass --overwrite" in capsys.readouterr().err
