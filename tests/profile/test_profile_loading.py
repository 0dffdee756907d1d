"""`load_profiled_pipeline`: the pipeline a profile was made with, exactly, or a clear refusal."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hgc_tune.errors import ProfileError, ReportError
from hgc_tune.macs import MacTable
from hgc_tune.models import model_fingerprint
from hgc_tune.models._fingerprint import weights_digest
from hgc_tune.profile import Profile, load_profiled_pipeline, profile_pipeline


class _Sample:
    prompt = "a red square"
    seed = None
    negative_prompt = None

    def condition_image(self) -> Image.Image:
        rng = np.random.RandomState(0)
        return Image.fromarray(rng.randint(0, 256, size=(64, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def profile(tiny_pipe) -> Profile:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return profile_pipeline(
            tiny_pipe,
            [_Sample()],
            num_steps=2,
            progress=False,
            model_name="tiny",
            mac_table=MacTable(model="tiny", height=64, width=64, per_image={}),
        )
    finally:
        torch.set_num_threads(threads)


def _with_model(profile: Profile, **changes) -> Profile:
    meta = profile.meta
    meta["model"].update(changes)
    return Profile(meta, profile.tensors())


def test_loads_the_profiled_pipeline_with_its_exact_scheduler(profile, tiny_pipe):
    pipe = load_profiled_pipeline(profile)
    assert model_fingerprint(pipe) == profile.fingerprint
    assert weights_digest(pipe) == profile.weights_digest
    assert type(pipe.scheduler).__name__ == profile.meta["scheduler"]
    assert dict(pipe.scheduler.config) == dict(tiny_pipe.scheduler.config)


def test_another_structure_is_refused_with_the_callers_error(profile):
    other = _with_model(profile, fingerprint="ffffffffffffffff")
    with pytest.raises(
        ReportError, match="has fingerprint .*, but the profile was made with 'ffffffffffffffff'"
    ):
        load_profiled_pipeline(other, error=ReportError)


def test_other_weights_of_the_same_structure_are_refused(profile):
    other = _with_model(profile, weights_digest="0123456789abcdef")
    with pytest.raises(ProfileError, match="other weights of this architecture \\('0123456789abcdef'\\)"):
        load_profiled_pipeline(other)


def test_a_profile_without_a_model_name_asks_for_one(profile):
    with pytest.raises(ProfileError, match="records no model name"):
        load_profiled_pipeline(_with_model(profile, name=""))
