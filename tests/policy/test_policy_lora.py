"""LoRA in a policy's provenance: the file format records it (strictly, old files unchanged), a pipeline's
adapters are read from its modules, and a tuned policy applied with other adapters (or none) warns once."""

from __future__ import annotations

import dataclasses
import json
import warnings

import pytest

from hgc_tune.errors import ModelLoadError, ModelNotFoundError, PolicyFormatError
from hgc_tune.executor import apply_policy
from hgc_tune.models import load_pipeline
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._lora import load_lora
from hgc_tune.policy import (
    LoraMismatchWarning,
    LoraSpec,
    PolicyFile,
    Provenance,
    dumps_policy,
    full_compute_policy,
    load_policy,
    loads_policy,
    peer_policy,
    pipeline_loras,
    target_for_pipeline,
)

STEPS = 4
SPEC = LoraSpec("style", "0123456789abcdef", 0.7)


def _tuned(pipe, lora=()):
    """A policy whose provenance records measured fidelity (as a search's does), tuned with ``lora``."""
    policy = peer_policy(
        "deepcache-n3-b0", target_for_pipeline(pipe, num_steps=STEPS), cacheable_module_keys(pipe)
    )
    provenance = Provenance(source="search", fidelity={"test_loss": 0.01}, lora=tuple(lora))
    return dataclasses.replace(policy, name="tuned", provenance=provenance)


@pytest.fixture(scope="module")
def lora_pipe(tiny_lora):
    pipe = load_pipeline("tiny")
    load_lora(pipe, str(tiny_lora()), 0.7)
    return pipe


def test_the_provenance_records_the_lora_and_reads_it_back(tiny_target):
    policy = dataclasses.replace(
        full_compute_policy(tiny_target(num_steps=STEPS)),
        provenance=Provenance(source="search", lora=(SPEC,)),
    )
    text = dumps_policy(policy)
    assert json.loads(text)["policies"][0]["provenance"]["lora"] == [
        {"name": "style", "digest": "0123456789abcdef", "scale": 0.7}
    ]
    assert loads_policy(text).select().provenance.lora == (SPEC,)
    # A version-1 file may carry it too (provenance only); it is written back as it was.
    v1 = dumps_policy(PolicyFile((policy,), schema_version=1))
    assert loads_policy(v1).schema_version == 1 and dumps_policy(loads_policy(v1)) == v1


def test_a_file_without_a_lora_keeps_its_bytes():
    text = open("policies/tiny-deepcache-n3-b0.json").read()
    assert '"lora"' not in text
    assert load_policy("policies/tiny-deepcache-n3-b0.json").select().provenance.lora == ()
    assert dumps_policy(loads_policy(text)) == text


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"name": "style", "digest": "xyz", "scale": 1.0}, r"lora\[0\]\.digest"),
        ({"name": "style", "digest": "0123456789abcdef", "scale": "1"}, r"lora\[0\]\.scale must be a number"),
        ({"name": "style", "digest": "0123456789abcdef"}, r"missing required key 'scale'"),
        ({"name": "style", "digest": "0123456789abcdef", "scale": 1, "path": "x"}, r"unknown key 'path'"),
    ],
)
def test_a_malformed_lora_entry_is_refused(tiny_target, entry, message):
    data = json.loads(dumps_policy(full_compute_policy(tiny_target(num_steps=STEPS))))
    data["policies"][0]["provenance"]["lora"] = [entry]
    with pytest.raises(PolicyFormatError, match=message):
        loads_policy(json.dumps(data))


def test_the_adapters_of_a_pipeline(tiny_lora, lora_pipe, tiny_pipe):
    assert pipeline_loras(tiny_pipe) == ()
    (spec,) = pipeline_loras(lora_pipe)
    assert (spec.name, spec.scale) == ("style", 0.7) and len(spec.digest) == 16
    # The digest is the weights', not the name's: the same file under another name has the same digest;
    # another LoRA has another.
    other = load_pipeline("tiny")
    load_lora(other, str(tiny_lora()), 0.5)
    load_lora(other, str(tiny_lora("style", seed=1)), 1.0)
    first, second = pipeline_loras(other)
    assert (first.name, first.digest, first.scale) == ("style", spec.digest, 0.5)
    assert (second.name, second.scale) == ("style_2", 1.0) and second.digest != spec.digest


def test_loading_a_lora_refuses_bad_input_by_name(tmp_path, tiny_pipe):
    with pytest.raises(ModelNotFoundError, match="LoRA '.*missing.safetensors' does not exist"):
        load_lora(tiny_pipe, str(tmp_path / "missing.safetensors"))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelLoadError, match="could not load LoRA"):
        load_lora(tiny_pipe, str(garbage))
    with pytest.raises(ModelLoadError, match="scale must be a finite number"):
        load_lora(tiny_pipe, str(garbage), float("nan"))
    assert pipeline_loras(tiny_pipe) == ()


def test_a_policy_tuned_without_the_lora_warns_once(lora_pipe, tiny_lora):
    with pytest.warns(
        LoraMismatchWarning, match=r"tuned with no LoRA, but this pipeline carries LoRA 'style'"
    ):
        apply_policy(lora_pipe, _tuned(lora_pipe)).remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_policy(lora_pipe, _tuned(lora_pipe)).remove()  # once per pipeline, policy and adapters


def test_a_policy_tuned_with_another_lora_or_scale_warns(lora_pipe):
    (spec,) = pipeline_loras(lora_pipe)
    for made in (dataclasses.replace(spec, digest="ffffffffffffffff"), dataclasses.replace(spec, scale=1.0)):
        with pytest.warns(LoraMismatchWarning, match=r"tuned with LoRA 'style' \(digest .*\), but this"):
            apply_policy(lora_pipe, _tuned(lora_pipe, [made])).remove()


def test_the_same_lora_or_an_untuned_policy_does_not_warn(lora_pipe, tiny_pipe):
    same = _tuned(lora_pipe, pipeline_loras(lora_pipe))
    renamed = _tuned(lora_pipe, [dataclasses.replace(pipeline_loras(lora_pipe)[0], name="renamed")])
    peer = dataclasses.replace(same, provenance=Provenance(source="peer:deepcache-n3-b0"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for policy in (same, renamed, peer):
            apply_policy(lora_pipe, policy).remove()
        apply_policy(tiny_pipe, _tuned(tiny_pipe)).remove()  # tuned on none, applied to none
    with pytest.warns(LoraMismatchWarning, match="tuned with LoRA 'style' .* carries no LoRA"):
        apply_policy(tiny_pipe, same).remove()
