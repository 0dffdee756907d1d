"""Analytic policy MACs on a small fake MAC table, against hand-computed numbers."""

from __future__ import annotations

from pathlib import Path

import pytest
from _policy_fixtures import make_target

from hgc_tune.errors import PolicyError
from hgc_tune.policy import (
    ControlNetSpec,
    ControlNetWindow,
    GuidanceWindow,
    Policy,
    PolicyTarget,
    Provenance,
    ReuseWindow,
    deepcache_policy,
    dumps_policy,
    full_compute_policy,
    load_policy,
    loads_policy,
    policy_macs,
)
from hgc_tune.policy._macs import (
    MECHANISMS,
    mac_savings_by_mechanism,
    macs_provenance,
    policy_step_macs,
)

POLICIES = Path(__file__).resolve().parents[2] / "policies"

A = "attentions.0.transformer_blocks.0.attn2"
PAPER = {
    "unet": 1000,
    "unet.down_blocks.0": 100,
    f"unet.down_blocks.0.{A}": 10,
    "unet.down_blocks.1": 200,
    f"unet.down_blocks.1.{A}": 20,
    "unet.mid_block": 50,
    "unet.up_blocks.0": 300,
    f"unet.up_blocks.0.{A}": 30,
    "controlnet": 500,
    "controlnet.down_blocks.0": 80,
    f"controlnet.down_blocks.0.{A}": 8,
    "controlnet.mid_block": 40,
    "text_encoder": 7,
    "vae.decoder": 300,
}
# The complete convention adds attention matmuls: +5 per attn2, carried up to its parents.
COMPLETE = dict(PAPER)
for _key in [k for k in PAPER if k.endswith(".attn2")]:
    for _parent in {_key, _key.split(".", 1)[0], _key.rsplit(f".{A}", 1)[0]}:
        COMPLETE[_parent] += 5


class FakeMacTable:
    """The hgc_tune.macs.MacTable interface with hand-set numbers (one image, one CFG branch).

    Like the real table, ``total`` counts the U-Net and the ControlNet (the HGC paper's count) and
    ``total_with_all`` adds the text encoder and the VAE decoder.
    """

    includes = ("controlnet", "unet")

    def __init__(self) -> None:
        self.tables = {"paper": PAPER, "complete": COMPLETE}

    def macs(self, key: str, convention: str = "paper") -> int:
        return self.tables[convention][key]

    def generation_macs(
        self, steps: int, cfg: bool = True, convention: str = "paper", batch: int = 1
    ) -> dict:
        t = self.tables[convention]
        branches = 2 if cfg else 1
        parts = {
            "unet": steps * branches * batch * t["unet"],
            "controlnet": steps * branches * batch * t["controlnet"],
            "text_encoder": branches * batch * t["text_encoder"],
            "vae_decoder": batch * t["vae.decoder"],
        }
        return {
            "includes": list(self.includes),
            "total": sum(parts[p] for p in self.includes),
            "total_with_all": sum(parts.values()),
            **parts,
        }


TABLE = FakeMacTable()
S = 4
# 4 steps x 2 branches x (1000 + 500)
FULL = 12_000
# + 2 x 7 (text encoder, prompt and negative prompt) + 300 (VAE decoder)
WITH_ALL = 12_314


def policy(**kwargs) -> Policy:
    return Policy(target=make_target(S), **kwargs)


def test_full_compute_policy_equals_generation_macs() -> None:
    for cfg in (True, False):
        for batch in (1, 3):
            for conv in ("paper", "complete"):
                m = policy_macs(
                    full_compute_policy(make_target(S)), TABLE, cfg=cfg, batch=batch, convention=conv
                )
                gen = TABLE.generation_macs(S, cfg=cfg, convention=conv, batch=batch)
                assert m["policy"] == m["full"] == gen["total"]
                assert m["policy_with_all"] == m["full_with_all"] == gen["total_with_all"]
                assert m["reduction"] == 0.0 and m["ratio"] == 1.0
    m = policy_macs(full_compute_policy(make_target(S)), TABLE)
    assert m["full"] == FULL and m["full_with_all"] == WITH_ALL
    assert m["full.unet"] == m["policy.unet"] == 8000
    assert m["full.controlnet"] == m["policy.controlnet"] == 4000
    assert m["text_encoder"] == 14 and m["vae_decoder"] == 300


def test_nested_skip_is_not_subtracted_twice() -> None:
    p = policy(
        blocks={"unet.down_blocks.1": (0, 2)},
        attention={f"unet.down_blocks.1.{A}": (ReuseWindow(1, 4),)},  # attn2 computes at {0, 1}
    )
    # per branch: step 0 nothing skipped; 1: the block skipped (-200) while its attn2 would compute;
    # 2: the computed block's attn2 skipped (-20); 3: the block skipped (-200), its attn2 with it (not again)
    assert [s["unet"] for s in policy_step_macs(p, TABLE)] == [2000, 1600, 1960, 1600]
    m = policy_macs(p, TABLE)
    assert m["policy.unet"] == 7160
    assert m["policy.controlnet"] == 4000
    assert m["policy"] == 7160 + 4000
    assert m["policy_with_all"] == 7160 + 4000 + 14 + 300
    assert m["reduction"] == pytest.approx(1 - 11160 / FULL)
    assert m["ratio"] == pytest.approx(FULL / 11160)


def test_skipped_block_with_computing_attn2_inside_costs_nothing_for_the_attn2() -> None:
    # the attn2 "computes" at step 1 but its block does not run, so nothing inside runs
    p = policy(
        blocks={"unet.down_blocks.0": (0,)}, attention={f"unet.down_blocks.0.{A}": (ReuseWindow(2, 4),)}
    )
    assert [s["unet"] for s in policy_step_macs(p, TABLE, cfg=False)] == [1000, 900, 900, 900]


@pytest.mark.parametrize("mode", ["drop", "reuse"])
def test_controlnet_outside_its_window_costs_nothing(mode: str) -> None:
    p = policy(controlnet=ControlNetWindow((0, 1), mode), blocks={"controlnet.down_blocks.0": (0,)})
    # step 0 full; step 1 without down_blocks.0 (-80); steps 2, 3 no ControlNet (its block not again)
    assert [s["controlnet"] for s in policy_step_macs(p, TABLE)] == [1000, 840, 0, 0]
    m = policy_macs(p, TABLE)
    assert m["policy.controlnet"] == 1840
    assert m["policy.unet"] == 8000
    assert m["policy"] == 8000 + 1840


def test_controlnet_dropped_everywhere() -> None:
    m = policy_macs(policy(controlnet=ControlNetWindow((), "drop")), TABLE)
    assert m["policy.controlnet"] == 0 and m["policy"] == 8000 and m["policy_with_all"] == 8314


def test_truncated_cfg() -> None:
    p = policy(guidance=GuidanceWindow(2))
    assert [s["unet"] for s in policy_step_macs(p, TABLE)] == [2000, 2000, 1000, 1000]
    m = policy_macs(p, TABLE)
    # U-Net 1000 x (2 + 2 + 1 + 1), ControlNet 500 x 6; the text encoder still encodes both prompts
    assert m["policy"] == 6000 + 3000
    assert m["policy_with_all"] == 6000 + 3000 + 14 + 300
    assert m["text_encoder"] == 14
    # without CFG there is nothing to truncate
    m = policy_macs(p, TABLE, cfg=False)
    assert m["policy"] == m["full"] == 4 * 1500
    assert m["policy_with_all"] == m["full_with_all"] == 4 * 1500 + 7 + 300


def test_truncated_cfg_with_skips_and_batch() -> None:
    p = policy(guidance=GuidanceWindow(3), blocks={"unet.mid_block": (0, 2)})
    # per image and branch: 1000, 950, 1000, 950; branches 2, 2, 2, 1; batch 3
    assert [s["unet"] for s in policy_step_macs(p, TABLE, batch=3)] == [6000, 5700, 6000, 2850]
    m = policy_macs(p, TABLE, batch=3)
    assert m["policy.unet"] == 20550
    assert m["policy.controlnet"] == 500 * 7 * 3
    assert m["vae_decoder"] == 900 and m["text_encoder"] == 42
    assert m["policy_with_all"] == 20550 + 10500 + 42 + 900
    assert m["full"] == TABLE.generation_macs(S, cfg=True, convention="paper", batch=3)["total"]


def test_attention_windows() -> None:
    key = f"unet.up_blocks.0.{A}"
    p = policy(attention={key: (ReuseWindow(0, 2), ReuseWindow(2, 4))})  # computes at 0 and 2
    assert [s["unet"] for s in policy_step_macs(p, TABLE, cfg=False)] == [1000, 970, 1000, 970]
    assert policy_macs(p, TABLE)["policy.unet"] == 8000 - 2 * 2 * 30
    # an empty window list and a one-step window reuse nothing
    p = policy(attention={key: (), f"unet.down_blocks.0.{A}": (ReuseWindow(3, 4),)})
    assert policy_macs(p, TABLE)["policy"] == FULL


def test_both_conventions() -> None:
    p = policy(attention={f"unet.down_blocks.1.{A}": (ReuseWindow(0, 4),)})  # attn2 computes at step 0 only
    paper = policy_macs(p, TABLE, convention="paper")
    complete = policy_macs(p, TABLE, convention="complete")
    assert paper["policy.unet"] == 8000 - 3 * 2 * 20
    # complete: U-Net 1015, that attn2 25
    assert complete["full.unet"] == 4 * 2 * 1015
    assert complete["policy.unet"] == 4 * 2 * 1015 - 3 * 2 * 25
    prov = macs_provenance(p, TABLE)
    assert prov == {"paper": paper, "complete": complete}
    # provenance MACs survive the file format
    q = Policy(target=p.target, attention=p.attention, provenance=Provenance(macs=prov))
    assert loads_policy(dumps_policy(q)).select() == q


def test_deepcache_macs_hand_computed() -> None:
    keys = [
        "controlnet",
        "controlnet.down_blocks.0",
        "controlnet.mid_block",
        "unet.down_blocks.0",
        "unet.down_blocks.1",
        "unet.mid_block",
        "unet.up_blocks.0",
    ]
    # 2 down blocks, 1 up block: branch 0 caches down_blocks.1 and mid_block; up_blocks.0 is shallow
    t = PolicyTarget("P", "UNet2DConditionModel", "ControlNetModel", "f", 4, "S")
    with pytest.raises(PolicyError, match="up_blocks indices"):
        deepcache_policy(t, [*keys, "unet.up_blocks.2"], 2, 0)
    p = deepcache_policy(t, keys, 2, 0)
    assert set(p.blocks) == {"unet.down_blocks.1", "unet.mid_block", "controlnet.mid_block"}
    steps = policy_step_macs(p, TABLE, cfg=False)
    assert [s["unet"] for s in steps] == [1000, 750, 1000, 750]
    assert [s["controlnet"] for s in steps] == [500, 460, 500, 460]


def test_bad_arguments() -> None:
    p = full_compute_policy(make_target(S))
    with pytest.raises(
        PolicyError, match=r"`convention` must be one of \['paper', 'complete'\], but got convention='fvcore'"
    ):
        policy_macs(p, TABLE, convention="fvcore")
    with pytest.raises(PolicyError, match=r"`batch` must be a positive integer, but got batch=0"):
        policy_macs(p, TABLE, batch=0)
    with pytest.raises(PolicyError, match=r"`cfg` must be a bool, but got cfg=2"):
        policy_macs(p, TABLE, cfg=2)


def test_inconsistent_table_is_reported() -> None:
    class Broken(FakeMacTable):
        def generation_macs(self, steps, cfg=True, convention="paper", batch=1):
            return {**super().generation_macs(steps, cfg, convention, batch), "unet": 10}

    with pytest.raises(
        PolicyError, match=r"MAC table is inconsistent: generation_macs gives unet=10 for 4 steps"
    ):
        policy_macs(full_compute_policy(make_target(S)), Broken())


def test_totals_follow_generation_macs_includes() -> None:
    class AllIncluded(FakeMacTable):
        includes = ("controlnet", "unet", "text_encoder", "vae_decoder")

    m = policy_macs(policy(guidance=GuidanceWindow(1)), AllIncluded())
    assert m["full"] == WITH_ALL
    # CFG at step 0 only: 1500 x (2 + 1 + 1 + 1)
    assert m["policy"] == 5 * 1500 + 314

    class UNetOnly(FakeMacTable):
        includes = ("unet",)

    m = policy_macs(policy(guidance=GuidanceWindow(1)), UNetOnly())
    assert m["full"] == 8000 and m["policy"] == 5000
    assert m["policy_with_all"] == 7500 + 314


def test_real_mac_table_gives_the_same_numbers() -> None:
    macs = pytest.importorskip("hgc_tune.macs")
    real = macs.MacTable("toy", 64, 64, {k: {"paper": PAPER[k], "complete": COMPLETE[k]} for k in PAPER})
    p = policy(
        blocks={"unet.down_blocks.1": (0, 2)},
        attention={f"unet.up_blocks.0.{A}": (ReuseWindow(0, 3),)},
        controlnet=ControlNetWindow((0, 1), "drop"),
        guidance=GuidanceWindow(3),
    )
    for conv in ("paper", "complete"):
        for p_ in (p, full_compute_policy(make_target(S))):
            assert policy_macs(p_, real, convention=conv, batch=2) == policy_macs(
                p_, TABLE, convention=conv, batch=2
            )
        full = policy_macs(full_compute_policy(make_target(S)), real, convention=conv)
        assert full["policy"] == real.generation_macs(S, cfg=True, convention=conv)["total"]


# -- savings by mechanism ------------------------------------------------------------------------------------

CN_A = f"controlnet.down_blocks.0.{A}"


def _split(p: Policy, table=TABLE, **kwargs) -> dict[str, int]:
    return dict(mac_savings_by_mechanism(p, table, **kwargs).parts)


def _only(**parts: int) -> dict[str, int]:
    return {m: parts.get(m, 0) for m in MECHANISMS}


def _keep(p: Policy, mechanisms) -> Policy:
    """``p`` with only the mechanisms named (the rest computes in full)."""
    blocks = {k: v for k, v in p.blocks.items() if f"{k.split('.')[0]}_blocks" in mechanisms}
    window = "controlnet_window" in mechanisms
    return Policy(
        target=p.target,
        blocks=blocks,
        attention=p.attention if "cross_attention" in mechanisms else {},
        controlnet=p.controlnet if window else None,
        controlnets=p.controlnets if window else {},
        guidance=p.guidance if "guidance_window" in mechanisms else None,
    )


def _saved(p: Policy, table, **kwargs) -> int:
    m = policy_macs(p, table, **kwargs)
    return m["full"] - m["policy"]


def check_split(p: Policy, table, **kwargs) -> None:
    """The split adds up to policy_macs' saving, and each part is what its mechanism saves beyond the policy
    made of the mechanisms before it in the stated order."""
    split = mac_savings_by_mechanism(p, table, **kwargs)
    totals = policy_macs(p, table, **kwargs)
    assert (split.full, split.policy) == (totals["full"], totals["policy"])
    assert sum(split.parts.values()) == split.saved == totals["full"] - totals["policy"]
    assert all(v >= 0 for v in split.parts.values())
    assert sum(split.controlnet_windows.values()) == split.parts["controlnet_window"]
    assert split.reduction()["total"] == pytest.approx(totals["reduction"])
    for i, mechanism in enumerate(MECHANISMS):
        before = _saved(_keep(p, MECHANISMS[:i]), table, **kwargs)
        assert split.parts[mechanism] == _saved(_keep(p, MECHANISMS[: i + 1]), table, **kwargs) - before
        # with this mechanism alone, its part is all the policy saves
        alone = _keep(p, (mechanism,))
        assert _split(alone, table, **kwargs) == _only(**{mechanism: _saved(alone, table, **kwargs)})


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        # steps 2, 3 conditional only: 2 x (1000 + 500)
        ({"guidance": GuidanceWindow(2)}, _only(guidance_window=3000)),
        # no ControlNet at steps 2, 3: 2 steps x 2 branches x 500
        ({"controlnet": ControlNetWindow((0, 1), "drop")}, _only(controlnet_window=2000)),
        ({"blocks": {"controlnet.down_blocks.0": (0, 2)}}, _only(controlnet_blocks=2 * 2 * 80)),
        ({"blocks": {"unet.down_blocks.1": (0, 2)}}, _only(unet_blocks=2 * 2 * 200)),
        # reused at steps 1, 2
        ({"attention": {f"unet.up_blocks.0.{A}": (ReuseWindow(0, 3),)}}, _only(cross_attention=2 * 2 * 30)),
        ({"attention": {CN_A: (ReuseWindow(0, 4),)}}, _only(cross_attention=3 * 2 * 8)),
    ],
    ids=["guidance", "controlnet-window", "controlnet-blocks", "unet-blocks", "attention", "cn-attention"],
)
def test_each_mechanism_alone(kwargs, expected) -> None:
    p = policy(**kwargs)
    assert _split(p) == expected
    # one mechanism: its part is the difference between full compute and the policy
    assert sum(expected.values()) == FULL - policy_macs(p, TABLE)["policy"]
    check_split(p, TABLE)


COMBINED = dict(
    guidance=GuidanceWindow(3),  # step 3 conditional only
    controlnet=ControlNetWindow((0, 1), "drop"),  # no ControlNet at steps 2, 3
    blocks={"controlnet.down_blocks.0": (0,), "unet.down_blocks.1": (0, 2)},  # skipped at 1-3 and 1, 3
    attention={
        f"unet.down_blocks.1.{A}": (ReuseWindow(0, 4),),  # reused at 1-3
        f"unet.up_blocks.0.{A}": (ReuseWindow(1, 3),),  # reused at 2
        CN_A: (ReuseWindow(0, 4),),  # reused at 1-3, always inside a skipped block or ControlNet
    },
)


def test_mechanisms_combined_hand_computed() -> None:
    p = policy(**COMBINED)
    split = mac_savings_by_mechanism(p, TABLE)
    assert split.parts == _only(
        # the unconditional half of step 3, with everything the others skip there
        guidance_window=1500,
        # steps 2 (two branches) and 3 (one): its block and attn2 with it
        controlnet_window=2 * 500 + 500,
        # step 1 only: at 2 and 3 the ControlNet window came first
        controlnet_blocks=2 * 80,
        # steps 1 (two branches) and 3 (one)
        unet_blocks=2 * 200 + 200,
        # down_blocks.1's attn2 only at step 2 (its block is skipped at 1 and 3); up_blocks.0's at step 2
        cross_attention=2 * 20 + 2 * 30,
    )
    assert split.controlnet_windows == {"controlnet": 1500}
    # U-Net 2 x 1000 + 2 x 800 + 2 x 950 + 800, ControlNet 2 x 500 + 2 x 420
    assert split.policy == policy_macs(p, TABLE)["policy"] == 6300 + 1840
    assert split.full == FULL and split.saved == 3860
    reduction = split.reduction()
    assert reduction["guidance_window"] == pytest.approx(1500 / FULL)
    assert reduction["total"] == pytest.approx(3860 / FULL)
    out = split.to_json()
    assert out["order"] == list(MECHANISMS) and out["order"][0] == "guidance_window"
    assert out["macs"] == dict(split.parts) and out["saved"] == 3860 and out["convention"] == "paper"
    # separate runs (each mechanism alone against full compute) do not add up: steps overlap
    alone = sum(_saved(_keep(p, (m,)), TABLE) for m in MECHANISMS)
    assert alone > split.saved


@pytest.mark.parametrize("convention", ["paper", "complete"])
@pytest.mark.parametrize(("cfg", "batch"), [(True, 1), (True, 3), (False, 2)])
def test_split_adds_up_in_every_setting(convention: str, cfg: bool, batch: int) -> None:
    p = policy(**COMBINED)
    check_split(p, TABLE, cfg=cfg, batch=batch, convention=convention)
    split = mac_savings_by_mechanism(p, TABLE, cfg=cfg, batch=batch, convention=convention)
    if not cfg:
        assert split.parts["guidance_window"] == 0
    if convention == "complete":  # the two attn2 reused at step 2 cost 5 more each, per branch and image
        paper = mac_savings_by_mechanism(p, TABLE, cfg=cfg, batch=batch)
        branches = 2 if cfg else 1
        assert split.parts["cross_attention"] - paper.parts["cross_attention"] == batch * branches * 2 * 5


def test_several_controlnets_are_split_per_controlnet() -> None:
    spec = ControlNetSpec("ControlNetModel", "f")
    target = PolicyTarget(
        "P", "UNet2DConditionModel", "MultiControlNetModel", "f", S, "S", controlnets=(spec, spec)
    )
    table = FakeMacTable()
    table.tables = {
        c: {**t, "controlnet.nets.0": 300, "controlnet.nets.1": 200} for c, t in table.tables.items()
    }
    p = Policy(
        target=target,
        controlnets={
            "controlnet.nets.0": ControlNetWindow((0, 1), "drop"),  # off at 2, 3
            "controlnet.nets.1": ControlNetWindow((0,), "reuse"),  # off at 1-3
        },
        guidance=GuidanceWindow(3),
    )
    split = mac_savings_by_mechanism(p, table)
    # net 0: step 2 (two branches) and 3 (one); net 1: steps 1, 2 (two) and 3 (one)
    assert split.controlnet_windows == {"controlnet.nets.0": 3 * 300, "controlnet.nets.1": 5 * 200}
    assert split.parts == _only(guidance_window=1500, controlnet_window=1900)
    check_split(p, table)


def _nested_table(p: Policy) -> FakeMacTable:
    """A table over the policy's modules whose numbers nest: each key costs its own MACs (distinct per key)
    plus those of the keys inside it; the complete convention adds 3 per attn2, carried up."""
    keys = sorted({"unet", "controlnet", *p.compute_sets()})
    own = {k: 1000 + 37 * i for i, k in enumerate(keys)}
    extra = {k: 3 if k.endswith(".attn2") else 0 for k in keys}
    table = FakeMacTable()
    table.tables = {
        conv: {
            **{"text_encoder": 7, "vae.decoder": 300},
            **{
                k: sum(
                    own[j] + (conv == "complete") * extra[j] for j in keys if j == k or j.startswith(k + ".")
                )
                for k in keys
            },
        }
        for conv in ("paper", "complete")
    }
    return table


SHIPPED_POLICIES = sorted(p for p in POLICIES.glob("*.json") if p.name != "policy.schema.json")


@pytest.mark.parametrize("path", SHIPPED_POLICIES, ids=[p.stem for p in SHIPPED_POLICIES])
def test_split_of_every_shipped_policy_adds_up(path) -> None:
    for p in load_policy(path).policies:
        table = _nested_table(p)
        for convention in ("paper", "complete"):
            check_split(p, table, convention=convention)
