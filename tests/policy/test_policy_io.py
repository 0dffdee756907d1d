"""The policy file format: round trip, determinism, atomic writes, schema agreement and strict reading."""

from __future__ import annotations

import copy
import json
import os
import random
import re
from pathlib import Path

import jsonschema
import pytest
from _policy_fixtures import TINY_KEYS, make_target

from hgc_tune.errors import PolicyFormatError
from hgc_tune.policy import (
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    PolicyFile,
    Provenance,
    ReuseWindow,
    dumps_policy,
    load_policy,
    loads_policy,
    save_policy,
)
from hgc_tune.policy._io import policy_from_json, policy_to_json

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "policies" / "policy.schema.json"
ATTN = "unet.up_blocks.1.attentions.0.transformer_blocks.0.attn2"


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def full_featured_policy(condition_type: str | None = "seg") -> Policy:
    return Policy(
        target=make_target(10, condition_type),
        blocks={"unet.mid_block": (0, 4, 8), "controlnet.down_blocks.3": (0, 5)},
        attention={ATTN: (ReuseWindow(6, 10), ReuseWindow(1, 3))},
        controlnet=ControlNetWindow((0, 1, 2, 3), "drop"),
        guidance=GuidanceWindow(7),
        provenance=Provenance(
            source="search",
            budget=0.015,
            metric="miou",
            fidelity={"full": 0.5, "policy": 0.495},
            macs={"paper": {"full": 18_220_000_000_000, "policy": 6.7e12, "ratio": 2.72}},
            study="s1",
            trial=42,
            hgc_tune_version="0.1.0",
            diffusers_version="0.42.1",
        ),
        name="searched",
    )


def random_policy(rng: random.Random) -> Policy:
    steps = rng.randint(1, 25)
    every = list(range(1, steps))
    blocks = {}
    attention = {}
    for key in TINY_KEYS:
        if key == "controlnet" or rng.random() < 0.5:
            continue
        if key.endswith(".attn2"):
            cuts = sorted(rng.sample(range(steps + 1), 2 * rng.randint(0, min(3, (steps + 1) // 2))))
            attention[key] = tuple(
                ReuseWindow(a, b) for a, b in zip(cuts[::2], cuts[1::2], strict=True) if a < b
            )
        else:
            blocks[key] = (0, *rng.sample(every, rng.randint(0, len(every))))
    controlnet = None
    if rng.random() < 0.6:
        mode = rng.choice(["reuse", "drop"])
        cn_steps = rng.sample(range(steps), rng.randint(0, steps))
        if mode == "reuse" and 0 not in cn_steps:
            cn_steps.append(0)
        controlnet = ControlNetWindow(tuple(cn_steps), mode)
    guidance = GuidanceWindow(rng.randint(1, steps)) if rng.random() < 0.5 else None
    provenance = Provenance(
        source=rng.choice([None, "search", "peer:x"]),
        budget=rng.choice([None, 0.01, 0.015]),
        fidelity={"miou": rng.random()} if rng.random() < 0.5 else {},
        macs={"paper": {"full": rng.randint(1, 10**13), "ratio": rng.random() + 1}}
        if rng.random() < 0.5
        else {},
        trial=rng.choice([None, 0, 7]),
    )
    return Policy(
        target=make_target(steps, rng.choice([None, "seg", "canny"])),
        blocks=blocks,
        attention=attention,
        controlnet=controlnet,
        guidance=guidance,
        provenance=provenance,
        name=f"random-{rng.randint(0, 999)}",
    )


# ------------------------------------------------------------------------------------------ round trip


def test_the_schema_states_the_module_layouts_key_pattern() -> None:
    from hgc_tune.models._blocks import MODULE_KEY_PATTERN

    schema = json.loads(SCHEMA_PATH.read_text())
    assert schema["$defs"]["moduleKey"]["pattern"] == MODULE_KEY_PATTERN


def test_round_trip_full_featured_policy() -> None:
    p = full_featured_policy()
    back = policy_from_json(policy_to_json(p))
    assert back == PolicyFile((p,))
    assert back.select() == p
    # windows come back sorted, as the model stores them
    assert back.select().attention[ATTN] == (ReuseWindow(1, 3), ReuseWindow(6, 10))


def test_confidence_in_provenance_round_trips_and_is_optional(validator) -> None:
    import dataclasses

    p = full_featured_policy()
    prov = dataclasses.replace(
        p.provenance,
        confidence=0.95,
        fidelity={"test_loss": 0.01, "test_loss_upper": 0.014, "test_samples": 64},
    )
    with_bound = dataclasses.replace(p, provenance=prov)
    data = policy_to_json(with_bound)
    validator.validate(data)
    assert data["policies"][0]["provenance"]["confidence"] == 0.95
    assert policy_from_json(data).select().provenance == prov
    # a policy without it is written as before (files made before the field keep their bytes)
    plain = dataclasses.replace(p, provenance=dataclasses.replace(p.provenance, confidence=None))
    assert "confidence" not in policy_to_json(plain)["policies"][0]["provenance"]
    bad = copy.deepcopy(data)
    bad["policies"][0]["provenance"]["confidence"] = 1.0
    assert not validator.is_valid(bad)


def test_round_trip_random_policies_and_schema(validator) -> None:
    rng = random.Random(1234)
    for _ in range(200):
        p = random_policy(rng)
        data = policy_to_json(p)
        validator.validate(data)
        assert policy_from_json(data).select() == p
        assert loads_policy(dumps_policy(p)).select() == p


def test_round_trip_multi_policy_file() -> None:
    f = PolicyFile((full_featured_policy("seg"), full_featured_policy("canny"), full_featured_policy(None)))
    back = loads_policy(dumps_policy(f))
    assert back == f
    assert back.select("canny").target.condition_type == "canny"
    assert back.select("depth").target.condition_type is None  # falls back to the any-condition policy


def test_json_layout_is_the_documented_one() -> None:
    data = policy_to_json(full_featured_policy())
    assert set(data) == {"schema_version", "policies"}
    assert data["schema_version"] == 3
    (p,) = data["policies"]
    assert set(p) == {"name", "target", "blocks", "attention", "controlnet", "guidance", "provenance"}
    assert p["blocks"] == {"controlnet.down_blocks.3": [0, 5], "unet.mid_block": [0, 4, 8]}
    assert p["attention"] == {ATTN: [[1, 3], [6, 10]]}
    assert p["controlnet"] == {"steps": [0, 1, 2, 3], "mode": "drop"}
    assert p["guidance"] == {"cfg_until": 7}
    assert p["target"]["num_steps"] == 10 and p["target"]["condition_type"] == "seg"
    empty = policy_to_json(Policy(target=make_target(5)))["policies"][0]
    assert empty["controlnet"] is None and empty["guidance"] is None
    assert empty["blocks"] == {} and empty["attention"] == {}


def test_dumps_is_deterministic_sorted_and_newline_terminated() -> None:
    text = dumps_policy(full_featured_policy())
    assert text.endswith("}\n") and not text.endswith("\n\n")
    assert text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert text.splitlines()[1] == '  "policies": ['
    # equal policies built from differently ordered inputs give the same bytes
    a = Policy(target=make_target(6), blocks={"unet.mid_block": (0, 3), "unet.down_blocks.1": (3, 0)})
    b = Policy(target=make_target(6), blocks={"unet.down_blocks.1": (0, 3), "unet.mid_block": (3, 0)})
    assert dumps_policy(a) == dumps_policy(b)


def test_save_and_load(tmp_path: Path) -> None:
    p = full_featured_policy()
    out = save_policy(p, tmp_path / "sub" / "tiny-seg.json")
    assert out == tmp_path / "sub" / "tiny-seg.json"
    assert out.read_text() == dumps_policy(p)
    assert load_policy(out).select() == p
    assert os.stat(out).st_mode & 0o777 == 0o644
    # overwriting keeps the existing permission bits and leaves no temporary file behind
    os.chmod(out, 0o600)
    save_policy(Policy(target=make_target(5), name="other"), out)
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert load_policy(out).select().name == "other"
    assert sorted(x.name for x in out.parent.iterdir()) == ["tiny-seg.json"]


def test_save_failure_leaves_old_file_and_no_temp(tmp_path: Path, monkeypatch) -> None:
    out = save_policy(full_featured_policy(), tmp_path / "p.json")
    before = out.read_text()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        save_policy(Policy(target=make_target(5)), out)
    assert out.read_text() == before
    assert [x.name for x in tmp_path.iterdir()] == ["p.json"]


def test_to_json_rejects_a_bad_module_key_and_non_finite_provenance() -> None:
    with pytest.raises(PolicyFormatError, match=r"module key 'vae\.decoder'"):
        policy_to_json(Policy(target=make_target(5), blocks={"vae.decoder": (0,)}))
    with pytest.raises(PolicyFormatError, match=r"provenance\.budget must be a finite number, but got nan"):
        dumps_policy(Policy(target=make_target(5), provenance=Provenance(budget=float("nan"))))
    with pytest.raises(PolicyFormatError, match="expected a Policy or a PolicyFile, but got dict"):
        policy_to_json({"name": "x"})


# ------------------------------------------------------------------------------------------ bad input


def good() -> dict:
    return policy_to_json(full_featured_policy())


def bad(mutate) -> str:
    data = copy.deepcopy(good())
    mutate(data)
    with pytest.raises(PolicyFormatError) as info:
        policy_from_json(data)
    return str(info.value)


def test_malformed_json_names_line_and_column(tmp_path: Path) -> None:
    text = dumps_policy(full_featured_policy()).replace('"blocks": {', '"blocks": {,', 1)
    line = next(i for i, s in enumerate(text.splitlines(), 1) if '"blocks": {,' in s)
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(PolicyFormatError, match=rf"broken\.json'.*malformed JSON at line {line}, column \d+"):
        load_policy(path)
    with pytest.raises(PolicyFormatError, match="malformed JSON at line 1, column 1"):
        loads_policy("")


def test_missing_file_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(PolicyFormatError, match=r"nope\.json' does not exist"):
        load_policy(tmp_path / "nope.json")
    (tmp_path / "latin.json").write_bytes(b'{"schema_version": 1, "policies": ["\xe9"]}')
    with pytest.raises(PolicyFormatError, match="latin.json"):
        load_policy(tmp_path / "latin.json")


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (lambda d: d.update(extra=1), r"policy file: unknown key 'extra'"),
        (lambda d: d["policies"][0].update(blokcs={}), r"policies\[0\]: unknown key 'blokcs'"),
        (
            lambda d: d["policies"][0]["target"].update(fingerprnt="x"),
            r"policies\[0\]\.target: unknown key 'fingerprnt'",
        ),
        (
            lambda d: d["policies"][0]["controlnet"].update(until=3),
            r"policies\[0\]\.controlnet: unknown key 'until'",
        ),
        (
            lambda d: d["policies"][0]["guidance"].update(scale=7.5),
            r"policies\[0\]\.guidance: unknown key 'scale'",
        ),
        (
            lambda d: d["policies"][0]["provenance"].update(seed=0),
            r"policies\[0\]\.provenance: unknown key 'seed'",
        ),
    ],
)
def test_unknown_key_is_named_with_its_location(mutate, pattern) -> None:
    assert re.search(pattern, bad(mutate))


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (
            lambda d: d["policies"][0]["target"].update(num_steps="10"),
            r"policies\[0\]\.target\.num_steps must be an integer, but got '10' \(str\)",
        ),
        (
            lambda d: d["policies"][0]["target"].update(num_steps=True),
            r"policies\[0\]\.target\.num_steps must be an integer, but got True \(bool\)",
        ),
        (
            lambda d: d["policies"][0]["blocks"].update({"unet.mid_block": [0, 4.0]}),
            r"policies\[0\]\.blocks\['unet\.mid_block'\]\[1\] must be an integer, but got 4\.0 \(float\)",
        ),
        (
            lambda d: d["policies"][0]["blocks"].update({"unet.mid_block": 0}),
            r"policies\[0\]\.blocks\['unet\.mid_block'\] must be a list, but got 0 \(int\)",
        ),
        (
            lambda d: d["policies"][0]["attention"].update({ATTN: [[1, 2, 3]]}),
            r"policies\[0\]\.attention\[.*attn2'\]\[0\] must be a window \[start, end\], but got \[1, 2, 3\]",
        ),
        (
            lambda d: d["policies"][0].update(name=None),
            r"policies\[0\]\.name must be a string, but got None \(null\)",
        ),
        (
            lambda d: d["policies"][0]["provenance"].update(budget="1%"),
            r"policies\[0\]\.provenance\.budget must be a number or null, but got '1%' \(str\)",
        ),
        (
            lambda d: d["policies"][0]["provenance"]["fidelity"].update(full=[1]),
            r"policies\[0\]\.provenance\.fidelity\['full'\] must be a number, but got \[1\] \(list\)",
        ),
        (
            lambda d: d["policies"][0]["provenance"].update(trial=1.5),
            r"policies\[0\]\.provenance\.trial must be an integer or null, but got 1\.5 \(float\)",
        ),
        (lambda d: d.update(policies={}), r"policies must be a list, but got \{\} \(dict\)"),
        (
            lambda d: d["policies"][0].update(guidance=3),
            r"policies\[0\]\.guidance must be an object or null, but got 3 \(int\)",
        ),
        (
            lambda d: d["policies"][0]["target"].update(condition_type=5),
            r"policies\[0\]\.target\.condition_type must be a string or null, but got 5 \(int\)",
        ),
    ],
)
def test_wrong_type_names_field_and_value(mutate, pattern) -> None:
    assert re.search(pattern, bad(mutate))


def test_missing_required_keys() -> None:
    assert "policies[0].target: missing required key 'fingerprint'" in bad(
        lambda d: d["policies"][0]["target"].pop("fingerprint")
    )
    assert "policies[0]: missing required key 'name'" in bad(lambda d: d["policies"][0].pop("name"))
    assert "policies[0].controlnet: missing required key 'mode'" in bad(
        lambda d: d["policies"][0]["controlnet"].pop("mode")
    )
    msg = bad(lambda d: d.pop("schema_version"))
    assert "missing required key 'schema_version'" in msg and "wrap it" not in msg
    with pytest.raises(PolicyFormatError, match="looks like a single policy: wrap it"):
        policy_from_json(good()["policies"][0])


def test_optional_policy_keys_default() -> None:
    data = good()
    for key in ("blocks", "attention", "controlnet", "guidance", "provenance"):
        del data["policies"][0][key]
    del data["policies"][0]["target"]["condition_type"]
    p = policy_from_json(data).select()
    assert p == Policy(target=make_target(10, None), name="searched")


def test_unknown_controlnet_mode() -> None:
    msg = bad(lambda d: d["policies"][0]["controlnet"].update(mode="skip"))
    assert re.search(
        r"policies\[0\]\.controlnet\.mode must be one of \['reuse', 'drop'\], but got 'skip'", msg
    )


def test_bad_module_keys() -> None:
    msg = bad(lambda d: d["policies"][0]["blocks"].update({"text_encoder.layers.0": [0]}))
    assert re.search(r"policies\[0\]\.blocks: module key 'text_encoder\.layers\.0' must be", msg)
    msg = bad(lambda d: d["policies"][0]["attention"].update({"unet.mid_block": []}))
    assert "attention['unet.mid_block']: reuse windows are for cross-attention" in msg
    msg = bad(lambda d: d["policies"][0]["blocks"].update({ATTN: [0]}))
    assert "belong in `attention`" in msg


@pytest.mark.parametrize("version", [0, 4, "1", True, None])
def test_unsupported_schema_version(version) -> None:
    msg = bad(lambda d: d.update(schema_version=version))
    assert f"unsupported schema_version={version!r}; this hgc-tune reads schema versions [1, 2, 3]" in msg


def test_unsupported_schema_version_wins_over_unknown_keys() -> None:
    # a newer file is reported as newer, not as a pile of unknown keys
    msg = bad(lambda d: d.update(schema_version=4, future_field={}))
    assert "schema_version=4" in msg


def test_compute_step_out_of_range() -> None:
    msg = bad(lambda d: d["policies"][0]["blocks"].update({"unet.mid_block": [0, 10]}))
    assert "policies[0]: blocks['unet.mid_block']: step 10 is out of range [0, 10)" in msg
    msg = bad(lambda d: d["policies"][0]["controlnet"].update(steps=[0, -1]))
    assert "policies[0].controlnet.steps[1] must be >= 0, but got -1" in msg
    msg = bad(lambda d: d["policies"][0]["controlnet"].update(steps=[0, 10]))
    assert "controlnet.steps: step 10 is out of range [0, 10)" in msg
    msg = bad(lambda d: d["policies"][0]["guidance"].update(cfg_until=11))
    assert "guidance.cfg_until must be an integer in [1, 10], but got 11" in msg
    msg = bad(lambda d: d["policies"][0]["target"].update(num_steps=0))
    assert "policies[0].target.num_steps must be >= 1, but got 0" in msg


def test_missing_step_zero() -> None:
    msg = bad(lambda d: d["policies"][0]["blocks"].update({"unet.mid_block": [1, 2]}))
    assert "blocks['unet.mid_block']: compute steps must include step 0" in msg
    msg = bad(lambda d: d["policies"][0].update(controlnet={"steps": [3], "mode": "reuse"}))
    assert "controlnet.steps: compute steps must include step 0" in msg
    # dropping needs no step 0: nothing is reused
    data = good()
    data["policies"][0]["controlnet"] = {"steps": [3], "mode": "drop"}
    assert policy_from_json(data).select().controlnet == ControlNetWindow((3,), "drop")


def test_overlapping_reuse_windows() -> None:
    msg = bad(lambda d: d["policies"][0]["attention"].update({ATTN: [[0, 4], [3, 6]]}))
    assert f"attention['{ATTN}']: windows [0, 4) and [3, 6) overlap" in msg
    msg = bad(lambda d: d["policies"][0]["attention"].update({ATTN: [[4, 4]]}))
    assert "window [4, 4) must satisfy 0 <= start < end <= 10" in msg


def test_duplicate_steps_keys_and_condition_types() -> None:
    msg = bad(lambda d: d["policies"][0]["blocks"].update({"unet.mid_block": [0, 3, 3]}))
    assert "steps must be unique, but got [0, 3, 3]" in msg
    with pytest.raises(PolicyFormatError, match="duplicate key 'blocks'"):
        loads_policy('{"schema_version": 1, "policies": [{"blocks": {}, "blocks": {}}]}')
    msg = bad(lambda d: d["policies"].append(copy.deepcopy(d["policies"][0])))
    assert "policy file: two policies in one file for condition_type='seg'" in msg
    assert "`policies` is empty" in bad(lambda d: d.update(policies=[]))


def test_non_finite_numbers_are_rejected() -> None:
    text = dumps_policy(full_featured_policy()).replace('"budget": 0.015', '"budget": NaN')
    with pytest.raises(PolicyFormatError, match="NaN is not valid JSON"):
        loads_policy(text)


def test_top_level_must_be_an_object() -> None:
    with pytest.raises(PolicyFormatError, match=r"policy file must be a JSON object, but got \[\] \(list\)"):
        loads_policy("[]")


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(extra=1),
        lambda d: d["policies"][0].update(blokcs={}),
        lambda d: d["policies"][0]["target"].update(fingerprnt="x"),
        lambda d: d["policies"][0]["controlnet"].update(until=3),
        lambda d: d["policies"][0]["guidance"].update(scale=7.5),
        lambda d: d["policies"][0]["provenance"].update(seed=0),
        lambda d: d["policies"][0]["controlnet"].update(mode="skip"),
        lambda d: d.update(schema_version=4),
        lambda d: d["policies"][0]["blocks"].update({"unet.mid_block": [1, 2]}),
        lambda d: d["policies"][0]["blocks"].update({"vae.decoder": [0]}),
        lambda d: d["policies"][0]["blocks"].update({ATTN: [0]}),
        lambda d: d["policies"][0]["attention"].update({"unet.mid_block": []}),
        lambda d: d["policies"][0]["attention"].update({ATTN: [[1, 2, 3]]}),
        lambda d: d["policies"][0]["target"].pop("fingerprint"),
        lambda d: d["policies"][0]["target"].update(num_steps="10"),
    ],
)
def test_schema_rejects_what_the_loader_rejects(mutate, validator) -> None:
    data = copy.deepcopy(good())
    mutate(data)
    assert not validator.is_valid(data)
    with pytest.raises(PolicyFormatError):
        policy_from_json(data)


def test_numpy_numbers_in_provenance_are_written_as_plain_numbers() -> None:
    np = pytest.importorskip("numpy")
    prov = Provenance(
        budget=np.float32(0.5),
        fidelity={"miou": np.float64(0.25)},
        macs={"paper": {"full": np.int64(7)}},
        trial=np.int64(3),
    )
    p = Policy(target=make_target(5), provenance=prov)
    data = policy_to_json(p)["policies"][0]["provenance"]
    assert data["budget"] == 0.5 and type(data["budget"]) is float
    assert type(data["fidelity"]["miou"]) is float and type(data["macs"]["paper"]["full"]) is int
    assert data["trial"] == 3 and type(data["trial"]) is int
    with pytest.raises(
        PolicyFormatError, match=r"provenance\.fidelity\['miou'\] must be a number, but got 'high'"
    ):
        policy_to_json(Policy(target=make_target(5), provenance=Provenance(fidelity={"miou": "high"})))


@pytest.mark.parametrize("depth", [100, 100_000], ids=["deep", "past-recursion-limit"])
def test_deeply_nested_policy_is_a_format_error(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "nested.json"
    path.write_text('{"schema_version": 1, "policies": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(PolicyFormatError, match=r"nested\.json'.*nested deeper than 64 levels"):
        load_policy(path)


def test_oversized_policy_file_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    path = tmp_path / "huge.json"
    with path.open("w") as f:
        f.write('{"schema_version": 1, "policies": [], "pad": "')
        f.write("x" * (16 * 2**20))
        f.write('"}')
    with pytest.raises(PolicyFormatError, match=r"huge\.json'.*more than the 16777216 bytes"):
        load_policy(path)


# ----------------------------------------------------------------- schema version 2: several ControlNets


def multi_policy() -> Policy:
    import dataclasses

    from hgc_tune.policy._model import ControlNetSpec

    target = dataclasses.replace(
        make_target(10, "seg,depth"),
        controlnet_class="MultiControlNetModel",
        controlnets=(
            ControlNetSpec("ControlNetModel", "aaaa", "seg"),
            ControlNetSpec("ControlNetModel", "bbbb", "depth"),
        ),
    )
    return Policy(
        target=target,
        blocks={"unet.mid_block": (0, 4, 8), "controlnet.nets.1.down_blocks.3": (0, 5)},
        controlnets={
            "controlnet.nets.1": ControlNetWindow((0, 1, 2), "drop"),
            "controlnet.nets.0": ControlNetWindow((0, 5), "reuse"),
        },
        name="multi",
    )


def test_multi_controlnet_policy_round_trips_as_version_2(validator) -> None:
    p = multi_policy()
    data = policy_to_json(p)
    validator.validate(data)
    assert data["schema_version"] == 3
    assert data["policies"][0]["target"]["controlnets"] == [
        {"class": "ControlNetModel", "fingerprint": "aaaa", "condition_type": "seg"},
        {"class": "ControlNetModel", "fingerprint": "bbbb", "condition_type": "depth"},
    ]
    assert data["policies"][0]["controlnets"] == {
        "controlnet.nets.0": {"steps": [0, 5], "mode": "reuse"},
        "controlnet.nets.1": {"steps": [0, 1, 2], "mode": "drop"},
    }
    back = loads_policy(dumps_policy(p)).select()
    assert back == p
    assert back.compute_sets()["controlnet.nets.1"] == frozenset({0, 1, 2})
    assert list(back.controlnet_windows) == ["controlnet.nets.0", "controlnet.nets.1"]


def test_version_1_files_load_unchanged_and_are_written_back_as_version_1() -> None:
    data = good()
    data["schema_version"] = 1
    pf = policy_from_json(data)
    assert pf.schema_version == 1
    assert policy_to_json(pf) == data


def test_version_1_cannot_hold_several_controlnets(validator) -> None:
    data = policy_to_json(multi_policy())
    data["schema_version"] = 1
    assert not validator.is_valid(data)
    with pytest.raises(
        PolicyFormatError, match=r"policies\[0\]\.controlnets is not allowed with schema_version 1"
    ):
        policy_from_json(data)
    with pytest.raises(PolicyFormatError, match="schema_version 1 cannot hold"):
        PolicyFile((multi_policy(),), schema_version=1)


@pytest.mark.parametrize(
    ("mutate", "pattern"),
    [
        (
            lambda d: d["policies"][0]["controlnets"].update(
                {"controlnet.nets.2": {"steps": [0], "mode": "reuse"}}
            ),
            r"policies\[0\]: controlnets\['controlnet\.nets\.2'\]: the target's ControlNets are "
            r"\['controlnet\.nets\.0', 'controlnet\.nets\.1'\]",
        ),
        (
            lambda d: d["policies"][0]["controlnets"].update({"controlnet": {"steps": [0], "mode": "reuse"}}),
            r"policies\[0\]\.controlnets: key 'controlnet' must match",
        ),
        (
            lambda d: d["policies"][0]["controlnets"]["controlnet.nets.0"].update(mode="skip"),
            r"policies\[0\]\.controlnets\['controlnet\.nets\.0'\]\.mode must be one of \['reuse', 'drop'\], "
            r"but got 'skip'",
        ),
        (
            lambda d: d["policies"][0]["controlnets"]["controlnet.nets.0"].update(steps=[5]),
            r"controlnets\['controlnet\.nets\.0'\]\.steps: compute steps must include step 0",
        ),
        (
            lambda d: d["policies"][0]["target"]["controlnets"][1].pop("fingerprint"),
            r"policies\[0\]\.target\.controlnets\[1\]: missing required key 'fingerprint'",
        ),
        (
            lambda d: d["policies"][0]["target"]["controlnets"][0].update(condition_type=3),
            r"policies\[0\]\.target\.controlnets\[0\]\.condition_type must be a string or null, but got 3",
        ),
        (
            lambda d: d["policies"][0]["target"].update(condition_type="depth,seg"),
            r"target\.condition_type must name the ControlNets' condition types in order, 'seg,depth'",
        ),
        (
            lambda d: d["policies"][0]["blocks"].update({"controlnet.nets.0": [0]}),
            r"blocks\['controlnet\.nets\.0'\]: a whole ControlNet is set by the `controlnets` windows",
        ),
        (
            lambda d: d["policies"][0].update(controlnet={"steps": [0], "mode": "reuse"}),
            "either one `controlnet` window or per-ControlNet `controlnets` windows, not both",
        ),
    ],
)
def test_multi_controlnet_errors_name_field_and_value(mutate, pattern) -> None:
    data = policy_to_json(multi_policy())
    mutate(data)
    with pytest.raises(PolicyFormatError) as e:
        policy_from_json(data)
    assert re.search(pattern, str(e.value)), str(e.value)


def test_per_controlnet_windows_need_a_target_with_several() -> None:
    with pytest.raises(
        PolicyFormatError, match="per-ControlNet windows need a target with several ControlNets"
    ):
        Policy(target=make_target(10), controlnets={"controlnet.nets.0": ControlNetWindow((0,))})


def test_the_loader_validates_with_the_shipped_schema() -> None:
    from hgc_tune.policy._io import policy_schema

    assert policy_schema() == json.loads(SCHEMA_PATH.read_text())
