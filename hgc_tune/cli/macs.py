"""Count the MACs of one full-compute generation, per block, in both conventions.

Conventions (one multiply-accumulate = 1): ``paper`` is fvcore's default count, which skips
scaled_dot_product_attention; ``complete`` adds the attention products QKᵀ and AV. The total counts the U-Net
and the ControlNet (what the HGC paper's 18.22T for SD1.5 + ControlNet, 512², 20 steps, CFG counts); the text
encoder and the VAE decoder are reported beside it. Operators fvcore has no handle for are listed with the
conventions they leave short (``unsupported_ops`` in ``--json``). Classifier-free guidance doubles the
denoisers' batch; it is counted when generation would run it — at the guidance scale a ``--policy`` was
measured at, else the model's recommended one, above 1 — unless ``--cfg`` or ``--no-cfg`` says otherwise.

Example (the paper's figure; about a minute or two on CPU):
    hgc-tune macs --model sd15 --resolution 512 --steps 20 --json

SDXL + ControlNet (the denoisers also get SDXL's ``added_cond_kwargs``; both text encoders are counted):
    hgc-tune macs --model sdxl --resolution 1024 --steps 20 --json

On the CPU the random-weight presets are counted with zero weights that take no memory (MACs depend on
shapes only), so ``sdxl`` needs no 19 GB of weights.

With ``--policy`` it also prints the MACs of the same generation under a caching policy (computed from the
per-module table and the policy's compute sets), the reduction, and where it comes from: the saving split
among the guidance window, the ControlNet window, ControlNet blocks, U-Net blocks and cross-attention reuse,
each skipped MAC counted once, for the first of these that skips it (``savings_by_mechanism`` in ``--json``):
    hgc-tune macs --model sd15 --policy policies/sd15-deepcache-n3-b0.json --json

With ``--lora PATH[:SCALE]`` the adapter is loaded unfused, its low-rank products are traced with the layers
it adapts and are in every count; the output lists each adapter and says so (``lora`` in ``--json``).
"""

from __future__ import annotations

import argparse
import sys
import time

from hgc_tune.cli._checks import add_resolution_argument, add_steps_argument, condition_types, int_in
from hgc_tune.cli._common import (
    add_model_arguments,
    add_policy_argument,
    load_pipeline_from_args,
    print_json,
    read_policy_argument,
    resolve_policy,
)
from hgc_tune.policy._macs import MECHANISM_LABELS

HELP = "count the MACs of a generation per block (paper and complete conventions)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    add_model_arguments(parser, with_condition=False)
    parser.add_argument(
        "--condition",
        type=condition_types("--condition"),
        default=None,
        help="condition type: picks the policy of a multi-condition policy file (MACs do not depend on it; "
        "for the shapes preset without --condition, the seg ControlNet is counted, which has the same "
        "architecture as the others)",
    )
    add_resolution_argument(
        parser,
        help="image height and width in pixels (default: the preset's, e.g. 512 for sd15, 64 for tiny)",
    )
    add_steps_argument(parser, default=None, help="denoising steps (default: the policy's, or 20)")
    parser.add_argument(
        "--batch", type=int_in("--batch", 1, 1024), default=1, help="images per generation (default: 1)"
    )
    cfg = parser.add_mutually_exclusive_group()
    cfg.add_argument(
        "--cfg",
        dest="cfg",
        action="store_const",
        const=True,
        default=None,
        help="count with classifier-free guidance (two denoiser branches per step)",
    )
    cfg.add_argument(
        "--no-cfg",
        dest="cfg",
        action="store_const",
        const=False,
        help="count without classifier-free guidance (default, without either flag: as generation runs — "
        "with CFG when the guidance scale the policy was measured at, else the model's recommended one, "
        "is above 1)",
    )
    parser.add_argument(
        "--convention",
        choices=["paper", "complete"],
        default="paper",
        help="convention of the human-readable table (default: paper; --json reports both)",
    )
    add_policy_argument(parser)
    parser.add_argument("--json", action="store_true", help="print JSON with both conventions")


def _resolution(args: argparse.Namespace, pipe) -> int:
    from hgc_tune.models._presets import PRESETS
    from hgc_tune.models._tasks import native_size

    if args.resolution is not None:
        return args.resolution
    if args.model in PRESETS:
        return PRESETS[args.model].resolution
    return native_size(pipe)


def _fmt(macs: int) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if macs >= scale:
            return f"{macs / scale:.3f} {unit}"
    return f"{macs} "


def _print_table(result: dict, convention: str) -> None:
    gen = result["conventions"][convention]
    other = "complete" if convention == "paper" else "paper"
    total = gen["total"]
    cfg = ("with CFG" if result["cfg"] else "without CFG") + f" ({result['cfg_source']})"
    print(
        f"MACs of one generation: {result['model']}, {result['resolution']}x{result['resolution']} px, "
        f"{result['steps']} steps, {cfg}, batch {result['batch']}"
    )
    print(f"convention: {convention} ({result['convention_notes'][convention]})")
    print()
    # Zero-MAC blocks (e.g. a remainder of 0) are left out of the human table; --json has them all.
    rows = [(key, macs, f"{100 * macs / total:5.1f}%") for key, macs in gen["blocks"].items() if macs]
    rows.append((f"total ({' + '.join(gen['includes'])})", total, "100.0%"))
    rows += [(f"{part} (not in total)", gen[part], "") for part in ("text_encoder", "vae_decoder")]
    rows.append(("total with all parts", gen["total_with_all"], ""))
    width = max(len(row[0]) for row in rows)
    print(f"{'block':<{width}}  {'MACs':>11}  {'share':>6}")
    for label, macs, share in rows:
        print(f"{label:<{width}}  {_fmt(macs):>11}  {share:>6}".rstrip())
    print()
    print(f"{other} convention total: {_fmt(result['conventions'][other]['total'])}")
    _print_unsupported(result["unsupported_ops"])


def _print_savings(split: dict) -> None:
    print()
    print(
        f"where the savings come from ({split['convention']}): each skipped MAC counts once, for the first "
        "mechanism below that skips it"
    )
    rows = [(MECHANISM_LABELS[m], split["macs"][m], split["reduction"][m]) for m in split["order"]]
    if len(split["controlnet_windows"]) > 1:
        at = split["order"].index("controlnet_window") + 1
        rows[at:at] = [
            (f"  {key}", macs, macs / split["full"] if split["full"] else 0.0)
            for key, macs in split["controlnet_windows"].items()
        ]
    rows.append(("total", split["saved"], split["reduction"]["total"]))
    width = max(len(row[0]) for row in rows)
    for label, macs, share in rows:
        print(f"  {label:<{width}}  {_fmt(macs):>11}  {100 * share:5.1f}% of full")


def savings_line(split: dict) -> str:
    """One line of a ``savings_by_mechanism`` entry: each mechanism's points of the reduction, and the sum."""
    parts = " + ".join(f"{MECHANISM_LABELS[m]} {100 * split['reduction'][m]:.1f}%" for m in split["order"])
    return f"{parts} = {100 * split['reduction']['total']:.1f}%"


def _print_unsupported(skipped: dict) -> None:
    if not skipped:
        print("fvcore counted every operator it met (or knows it holds no MACs).")
        return
    print("operators fvcore skipped (not counted; per image, one forward of each module):")
    for op, entry in skipped.items():
        print(
            f"  {op}: {entry['count']}x in {', '.join(entry['modules'])}; "
            f"missing from {' and '.join(entry['conventions'])}"
        )


def _lora_entries(pipe) -> list[dict]:
    """Each ``--lora`` adapter, and whether its MACs are in the counts: an unfused adapter's low-rank
    products run beside the layers it adapts and are traced with them; a fused one adds none."""
    from hgc_tune.models._lora import fused_adapters
    from hgc_tune.policy import pipeline_loras

    fused = fused_adapters(pipe)
    return [
        {
            "name": a.name,
            "digest": a.digest,
            "scale": a.scale,
            "counted": a.name not in fused,
            "macs": "fused into the weights: adds no MACs"
            if a.name in fused
            else "unfused: its low-rank products are counted in the blocks that hold its layers (and the "
            "total)",
        }
        for a in pipeline_loras(pipe)
    ]


def counted_with_cfg(policy, pipe) -> tuple[bool, str]:
    """Whether a generation runs classifier-free guidance, and why: at the guidance scale the policy was
    measured at (its provenance), else at the model's recommended one; CFG runs when that scale is above 1."""
    from hgc_tune.models import pipeline_guidance

    measured = policy.provenance.guidance_scale if policy is not None else None
    if measured is not None:
        return measured > 1.0, f"the policy's guidance scale {measured:g}"
    guidance = pipeline_guidance(pipe)
    return guidance.scale > 1.0, f"guidance scale {guidance.scale:g} ({guidance.source})"


def run(args: argparse.Namespace) -> int:
    # A policy file is read and checked before torch and the model load: a bad one is refused in a moment.
    policy_file = read_policy_argument(args.policy)

    from hgc_tune.executor import check_policy_fits
    from hgc_tune.macs import count_pipeline_macs
    from hgc_tune.macs._count import CONVENTIONS

    # MACs depend on shapes only: a random-weight preset is counted with storage-free weights on the CPU.
    loading = argparse.Namespace(**{**vars(args), "shape_only": True})
    if args.model == "shapes" and args.condition is None:
        from hgc_tune.models._shapes import SHAPES_CONDITIONS

        # Every shapes ControlNet has the same architecture, so any one counts the same MACs.
        loading.condition = SHAPES_CONDITIONS[0]
    pipe = load_pipeline_from_args(loading)
    policy = resolve_policy(
        args.policy,
        pipe,
        num_steps=args.steps,
        condition_type=args.condition,
        model=args.model,
        policy_file=policy_file,
    )
    if policy is not None:
        from hgc_tune.models._tasks import pipeline_for_task, task_of_class

        # An img2img or inpainting policy: the same components under the pipeline class it names.
        task = task_of_class(policy.target.pipeline_class)
        if task is not None:
            pipe = pipeline_for_task(pipe, task)
        # Another model's policy would print a reduction for modules it was never made for.
        check_policy_fits(pipe, policy)
    args.steps = policy.num_steps if policy is not None else (args.steps or 20)
    if args.cfg is None:
        args.cfg, args.cfg_source = counted_with_cfg(policy, pipe)
    else:
        args.cfg_source = "--cfg" if args.cfg else "--no-cfg"
    resolution = _resolution(args, pipe)
    start = time.perf_counter()
    table = count_pipeline_macs(pipe, height=resolution, width=resolution, model_name=args.model)
    seconds = time.perf_counter() - start
    conventions = {
        c: table.generation_macs(steps=args.steps, cfg=args.cfg, convention=c, batch=args.batch)
        for c in CONVENTIONS
    }
    parts = ("unet", "controlnet", "text_encoder", "text_encoder_2", "vae.decoder")
    result = {
        "model": args.model,
        "resolution": resolution,
        "steps": args.steps,
        "cfg": args.cfg,
        "cfg_source": args.cfg_source,
        "batch": args.batch,
        "includes": conventions["paper"]["includes"],
        "conventions": conventions,
        "convention_notes": {
            "paper": "fvcore's default count; scaled_dot_product_attention not counted",
            "complete": "paper + attention QK^T and AV",
        },
        "per_image": {p: dict(table.per_image[p]) for p in parts if p in table.per_image},
        # Operators fvcore ran into without a handle: the counts above leave them out.
        "unsupported_ops": table.skipped_ops(),
        "unsupported_ops_by_module": {k: dict(v) for k, v in table.unsupported_ops.items()},
    }
    loras = _lora_entries(pipe)
    if loras:
        result["lora"] = loras
    if policy is not None:
        from hgc_tune.policy import policy_macs
        from hgc_tune.policy._macs import mac_savings_by_mechanism

        result["policy"] = {
            "name": policy.name,
            "path": args.policy,
            **{
                c: policy_macs(policy, table, cfg=args.cfg, batch=args.batch, convention=c)
                for c in CONVENTIONS
            },
            "savings_by_mechanism": {
                c: mac_savings_by_mechanism(
                    policy, table, cfg=args.cfg, batch=args.batch, convention=c
                ).to_json()
                for c in CONVENTIONS
            },
        }
    if args.json:
        print_json(result)
    else:
        _print_table(result, args.convention)
        for entry in loras:
            print(f"LoRA {entry['name']!r} (scale {entry['scale']:g}): {entry['macs']}")
        if policy is not None:
            for c in CONVENTIONS:
                m = result["policy"][c]
                print(
                    f"policy {policy.name!r} ({c}): {_fmt(m['policy'])} of {_fmt(m['full'])} full, "
                    f"reduction {100 * m['reduction']:.1f}% ({m['ratio']:.2f}x fewer MACs)"
                )
            _print_savings(result["policy"]["savings_by_mechanism"][args.convention])
    print(f"counted in {seconds:.1f} s", file=sys.stderr)
    return 0
