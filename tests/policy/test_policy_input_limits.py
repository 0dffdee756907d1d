"""Sizes and file kinds of a policy input: a policy that declares 10**9 or 1e400 steps is refused by the
format (schema and PolicyTarget) before anything is sized by it, by `macs` and `generate` within 5 s and
1 GiB; a FIFO, a device file or a folder given as the policy file is refused at once."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from _policy_fixtures import make_target
from PIL import Image

from hgc_tune.errors import PolicyFormatError
from hgc_tune.policy import PolicyTarget, load_policy
from hgc_tune.policy._model import MAX_NUM_STEPS

SHIPPED = Path(__file__).resolve().parents[2] / "policies" / "tiny-deepcache-n3-b0.json"


def _with_steps(tmp_path, steps_text: str) -> Path:
    data = json.loads(SHIPPED.read_text())
    data["policies"][0]["target"]["num_steps"] = 0
    path = tmp_path / f"steps-{steps_text}.json"
    path.write_text(json.dumps(data).replace('"num_steps": 0', f'"num_steps": {steps_text}'))
    return path


@pytest.mark.parametrize(
    "steps, words",
    [
        ("1000000000", "policies[0].target.num_steps must be <= 1000, but got 1000000000."),
        ("1e400", "policies[0].target.num_steps must be an integer, but got inf (float)."),
    ],
)
def test_a_policy_file_that_declares_too_many_steps_is_refused_at_once(tmp_path, steps, words):
    path = _with_steps(tmp_path, steps)
    start = time.perf_counter()
    with pytest.raises(PolicyFormatError, match=re.escape(words)):
        load_policy(path)
    assert time.perf_counter() - start < 1


def test_a_target_with_too_many_steps_is_refused_from_python():
    assert make_target(MAX_NUM_STEPS).num_steps == MAX_NUM_STEPS
    target = make_target(5)
    fields = {f: getattr(target, f) for f in target.__dataclass_fields__}
    with pytest.raises(PolicyFormatError, match=r"target.num_steps must be an integer in \[1, 1000\]"):
        PolicyTarget(**{**fields, "num_steps": 10**9})


@pytest.mark.parametrize("steps", ["1000000000", "1e400"])
@pytest.mark.parametrize("command", ["macs", "generate"])
def test_macs_and_generate_refuse_it_within_limits(tmp_path, limited_cli, command, steps):
    path = _with_steps(tmp_path, steps)
    extra = []
    if command == "generate":
        Image.new("RGB", (64, 64)).save(tmp_path / "c.png")
        extra = [
            "--condition-image",
            str(tmp_path / "c.png"),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o.png"),
        ]
    code, lines, seconds = limited_cli(command, "--model", "tiny", "--policy", str(path), *extra)
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith(
        f"hgc-tune {command}: error: policy file '{path}': policies[0].target.num_steps"
    )
    assert seconds < 5
    assert not (tmp_path / "o.png").exists()


@pytest.fixture
def not_files(tmp_path):
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)
    return {"a FIFO (named pipe)": fifo, "a device file": Path("/dev/zero"), "a folder": tmp_path}


@pytest.mark.parametrize("kind", ["a FIFO (named pipe)", "a device file", "a folder"])
def test_a_policy_path_that_is_not_a_regular_file_is_refused_at_once(not_files, kind):
    path = not_files[kind]
    start = time.perf_counter()
    with pytest.raises(PolicyFormatError) as caught:
        load_policy(path)
    assert (
        str(caught.value) == f"cannot read policy file '{path}': it must be a regular file, but it is {kind}."
    )
    assert time.perf_counter() - start < 1


def test_macs_refuses_a_fifo_policy_at_once(not_files, limited_cli):
    fifo = not_files["a FIFO (named pipe)"]
    code, lines, seconds = limited_cli("macs", "--model", "tiny", "--policy", str(fifo), timeout=30)
    assert code == 2
    assert lines == [
        f"hgc-tune macs: error: cannot read policy file '{fifo}': it must be a regular file, but it is a "
        "FIFO (named pipe)."
    ]
    assert seconds < 5
