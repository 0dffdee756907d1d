"""Write the shipped peer policies: ``policies/<model>-<peer>.json`` for the offline presets.

The targets (fingerprint, class names, scheduler) come from the loaded presets, so the files fit them
exactly; the schedules come from :func:`hgc_tune.policy.peer_policy`. When ``hgc_tune.macs`` provides
``count_pipeline_macs``, each file's ``provenance.macs`` holds the policy MACs in both conventions
(CFG, batch 1, the preset's resolution: tiny 64², sd15 512², sdxl 1024²); without it the files are written
with empty ``macs`` and a note on stderr — re-run this script once the MAC counter exists.

Usage:
    python analysis/make_peer_policies.py                  # tiny, sd15, shapes, sdxl
    python analysis/make_peer_policies.py --models sdxl    # ~10 CPU minutes (the 1024² trace), < 2 GB RAM

The random-weight presets are loaded with storage-free zero weights (``load_pipeline(..., shape_only=True)``):
the targets and MACs depend on shapes only.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from importlib import metadata
from pathlib import Path

from hgc_tune.models import load_pipeline
from hgc_tune.models._blocks import cacheable_module_keys
from hgc_tune.models._presets import PRESETS
from hgc_tune.policy import peer_policy, save_policy, target_for_pipeline
from hgc_tune.policy._macs import macs_provenance
from hgc_tune.policy._peers import DEFAULT_PEERS

REPO = Path(__file__).resolve().parents[1]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _mac_table(pipe, model: str):
    try:
        from hgc_tune.macs import count_pipeline_macs
    except ImportError:
        print(
            "note: hgc_tune.macs.count_pipeline_macs is not available; provenance.macs left empty.",
            file=sys.stderr,
        )
        return None
    size = PRESETS[model].resolution
    return count_pipeline_macs(pipe, height=size, width=size, model_name=model)


def make_peer_policies(model: str, *, num_steps: int, peers: tuple[str, ...], out_dir: Path) -> list[Path]:
    """Write one policy file per peer for ``model``; returns the paths written."""
    # The shapes preset's four ControlNets share one architecture: its policies fit every condition type.
    if model == "shapes":
        pipe = load_pipeline(model, condition="seg")
    else:
        pipe = load_pipeline(model, shape_only=PRESETS[model].random_weights)
    target = target_for_pipeline(pipe, num_steps=num_steps, model=model)
    keys = list(cacheable_module_keys(pipe))
    table = _mac_table(pipe, model)
    written = []
    for name in peers:
        policy = peer_policy(name, target, keys)
        provenance = dataclasses.replace(
            policy.provenance,
            macs=macs_provenance(policy, table) if table is not None else {},
            hgc_tune_version=_version("hgc-tune"),
            diffusers_version=_version("diffusers"),
        )
        written.append(
            save_policy(dataclasses.replace(policy, provenance=provenance), out_dir / f"{model}-{name}.json")
        )
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models",
        nargs="+",
        default=["tiny", "sd15", "shapes", "sdxl"],
        help="presets to write policies for",
    )
    parser.add_argument("--steps", type=int, default=20, help="denoising steps the policies are made for")
    parser.add_argument("--peers", nargs="+", default=list(DEFAULT_PEERS), help="peer policy names")
    parser.add_argument("--out", type=Path, default=REPO / "policies", help="output directory")
    args = parser.parse_args(argv)
    for model in args.models:
        for path in make_peer_policies(
            model, num_steps=args.steps, peers=tuple(args.peers), out_dir=args.out
        ):
            print(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
