"""`hgc-tune report --policy` refuses a policy made for another scheduler (or condition) than its profile."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from hgc_tune.cli import main
from hgc_tune.errors import ReportError
from hgc_tune.policy import full_compute_policy, save_policy
from hgc_tune.profile import profile_pipeline
from hgc_tune.report import build_report

STEPS = 3


@dataclass
class _Sample:
    prompt: str
    seed: int | None = None
    negative_prompt: str | None = None

    def condition_image(self) -> Image.Image:
        array = np.zeros((64, 64, 3), dtype=np.uint8)
        array[12:44, 20:52] = (220, 40, 40)
        return Image.fromarray(array)


@pytest.fixture(scope="module")
def profile_dir(tiny_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs") / "tiny-seg"
    profile = profile_pipeline(
        tiny_pipe,
        [_Sample("a red square")],
        num_steps=STEPS,
        progress=False,
        model_name="tiny",
        condition_type="seg",
    )
    profile.save(folder)
    return folder


def test_a_policy_for_another_scheduler_is_refused(profile_dir, tiny_target, tmp_path, capsys):
    target = dataclasses.replace(
        tiny_target(num_steps=STEPS, condition_type="seg"), scheduler="DDIMScheduler"
    )
    policy_file = save_policy(full_compute_policy(target), tmp_path / "other.json")
    out = tmp_path / "report"
    code = main(["report", "--profile", str(profile_dir), "--policy", str(policy_file), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert "scheduler: policy has 'DDIMScheduler', profile has 'UniPCMultistepScheduler'" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_policy_object_for_another_condition_is_refused(profile_dir, tiny_target, tmp_path):
    """A file is picked by the profile's condition; a Policy given from Python is checked against it."""
    policy = full_compute_policy(tiny_target(num_steps=STEPS, condition_type="canny"))
    with pytest.raises(ReportError, match="condition_type: policy has 'canny', profile has 'seg'"):
        build_report(profile_dir, tmp_path / "report", policy=policy, samples=0)
    assert not (tmp_path / "report").exists()
