"""The sample grid's columns, row labels, difference image and captions."""

from __future__ import annotations

import numpy as np
import pytest

from hgc_tune.report._figure_info._samples import _get_samples_info

CONDITIONS = np.full((2, 2, 2, 3), 200, dtype=np.uint8)
FULL = np.zeros((2, 2, 2, 3), dtype=np.uint8)


def test_with_policy_images_four_columns_and_their_difference():
    policy = FULL.copy()
    policy[1, 0, 0] = (30, 0, 0)
    policy[1, 1, 1] = (255, 255, 0)
    info = _get_samples_info(
        CONDITIONS,
        FULL,
        policy,
        indices=[3, 5],
        seeds=[7, 8],
        prompts=["a red circle", "a blue square"],
        psnr_db=[30.04, 12.96],
        policy_name="tuned",
    )
    assert info.titles == ["condition", "full compute", "policy: tuned", "|full − policy|"]
    assert info.rows == ["#3  seed 7\na red circle", "#5  seed 8\na blue square"]
    assert [len(images) for images in info.images] == [3, 3]
    assert np.array_equal(info.images[1][2], policy[1])
    # the mean over RGB of |full - policy|: 10 and 170 levels, 0 elsewhere
    np.testing.assert_allclose(info.diff[0], 0.0)
    np.testing.assert_allclose(info.diff[1], [[10.0, 0.0], [0.0, 170.0]])
    assert info.diff_max == pytest.approx(170.0)
    assert info.psnr_labels == ["PSNR 30.0 dB vs full", "PSNR 13.0 dB vs full"]


def test_identical_images_keep_a_colour_range_of_one_level():
    info = _get_samples_info(CONDITIONS, FULL, FULL, indices=[0, 1], seeds=[0, 1], prompts=["a", "b"])
    assert info.diff_max == 1.0 and info.psnr_labels is None


def test_without_policy_images_two_columns():
    info = _get_samples_info(
        CONDITIONS, FULL, None, indices=[0, 1], seeds=[0, 1], prompts=["a", "b"], psnr_db=[1.0, 2.0]
    )
    assert info.titles == ["condition", "full compute"]
    assert info.diff is None and info.psnr_labels is None
    assert [len(images) for images in info.images] == [2, 2]


def test_long_prompts_and_names_are_cut():
    prompt = "a very long prompt " * 10
    name = "tuned-trial-41-" + "x" * 60
    info = _get_samples_info(
        CONDITIONS[:1], FULL[:1], FULL[:1], indices=[0], seeds=[0], prompts=[prompt], policy_name=name
    )
    # the prompt: shortened to 70 characters ("… a very long …"), wrapped at 26, three lines at most
    assert (
        info.rows[0] == "#0  seed 0\na very long prompt a very\nlong prompt a very long\nprompt a very long …"
    )
    # the policy column's title: two lines of at most 24 characters, the second cut with "…"
    title = info.titles[2]
    assert title == "policy: tuned-trial-41-\n" + "x" * 23 + "…"
