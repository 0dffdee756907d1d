"""`--scheduler pndm` (SD1.5's own default) with a policy: refused in one line, naming the scheduler, before
anything is generated; without a policy it generates."""

from __future__ import annotations

import pytest

from hgc_tune.cli import main

ARGS = ["generate", "--model", "tiny", "--prompt", "a red square", "--steps", "4", "--scheduler", "pndm"]


@pytest.fixture(scope="module")
def condition_file(tmp_path_factory, condition_image):
    path = tmp_path_factory.mktemp("condition") / "seg.png"
    condition_image.save(path)
    return path


@pytest.mark.parametrize("policy", ["peer:deepcache-n2-b0", "full-hooked"])
def test_a_policy_under_pndm_is_refused_in_one_line(tmp_path, condition_file, capsys, policy):
    out = tmp_path / "out.png"
    argv = [*ARGS, "--condition-image", str(condition_file), "--policy", policy, "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("hgc-tune generate: error: scheduler PNDMScheduler calls the denoisers")
    assert "once per step" in err[-1] and not any("Traceback" in line for line in err)
    assert not out.exists()


def test_pndm_without_a_policy_generates(tmp_path, condition_file):
    out = tmp_path / "out.png"
    assert main([*ARGS, "--condition-image", str(condition_file), "--out", str(out)]) == 0
    assert out.is_file()
