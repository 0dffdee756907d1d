"""Removing one hook of a chain on toy modules with hand-computed outputs: hgc-tune's ``remove_hook`` unwinds
its own hook wherever it sits in diffusers' ``HookRegistry`` chain, and leaves the other hooks running.

Contract with diffusers (private registry fields, pinned here; pyproject.toml pins diffusers' minor
release): ``HookRegistry.remove_hook`` of a hook that has another hook with ``new_forward`` registered after
it rewires that hook's ``forward`` instead of its ``original_forward``. If diffusers fixes this,
``test_diffusers_middle_removal_is_still_broken`` fails and the repair in ``hgc_tune/runtime/_registry.py``
can go.
"""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook

from hgc_tune.runtime._registry import register_hook, remove_hook, repair_hook, unhooked_view


class _Double(torch.nn.Module):
    def forward(self, x):
        return 2 * x


class _Add(ModelHook):
    """A hook that replaces ``forward`` (like diffusers' caches): adds ``n`` to the module's output."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def new_forward(self, module, x):
        return self.fn_ref.original_forward(x) + self.n


def _registry(module) -> HookRegistry:
    return HookRegistry.check_if_exists_or_initialize(module)


def _value(module) -> int:
    return int(module(torch.tensor(1)))


def test_diffusers_registry_fields_used_by_the_repair():
    module = _Double()
    registry = _registry(module)
    registry.register_hook(_Add(1), "first")
    registry.register_hook(_Add(10), "second")
    assert module._diffusers_hook is registry and registry._module_ref is module
    assert registry._hook_order == ["first", "second"]
    assert [ref.forward for ref in registry._fn_refs] == [
        registry.get_hook(name).fn_ref.forward for name in registry._hook_order
    ]
    assert all(hasattr(ref, "original_forward") for ref in registry._fn_refs)


def test_diffusers_middle_removal_is_still_broken():
    module = _Double()
    _registry(module).register_hook(_Add(1), "below")
    _registry(module).register_hook(_Add(10), "above")
    _registry(module).remove_hook("below", recurse=False)
    assert _value(module) == 2  # "above" no longer runs: diffusers rewired its new_forward away
    _registry(module).remove_hook("above", recurse=False)
    assert _value(module) == 3  # and the removed "below" is back


def test_removing_ours_below_another_hook_keeps_the_other():
    module = _Double()
    register_hook(module, _Add(1), "ours")
    _registry(module).register_hook(_Add(10), "theirs")
    assert _value(module) == 13
    remove_hook(module, "ours")
    assert _value(module) == 12
    _registry(module).remove_hook("theirs", recurse=False)
    assert _value(module) == 2


def test_removing_ours_after_diffusers_removed_the_hook_below():
    module = _Double()
    _registry(module).register_hook(_Add(10), "theirs")
    register_hook(module, _Add(1), "ours")
    _registry(module).remove_hook("theirs", recurse=False)  # bypasses "ours" (diffusers' rewiring)
    repair_hook(module, "ours")
    assert _value(module) == 3
    remove_hook(module, "ours")
    assert _value(module) == 2


@pytest.mark.parametrize("position", [0, 1, 2])
def test_ours_in_a_chain_of_three(position):
    module = _Double()
    names = ["a", "b", "c"]
    for i, name in enumerate(names):
        hook = _Add(10**i)
        if i == position:
            register_hook(module, hook, name)
        else:
            _registry(module).register_hook(hook, name)
    assert _value(module) == 2 + 111
    remove_hook(module, names[position])
    assert _value(module) == 2 + 111 - 10**position
    for name in reversed(names):  # top down: diffusers' own removal is exact for the last hook
        if name != names[position]:
            _registry(module).remove_hook(name, recurse=False)
    assert _value(module) == 2


def test_repair_of_an_intact_hook_changes_nothing():
    module = _Double()
    register_hook(module, _Add(1), "ours")
    repair_hook(module, "ours")
    assert _value(module) == 3


class _Offset(ModelHook):
    """A hook that only wraps ``forward`` (like the executor's guard): adds ``n`` to the input."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def pre_forward(self, module, x):
        return (x + self.n,), {}


@pytest.mark.parametrize(
    "copier", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))], ids=["deepcopy", "pickle"]
)
def test_a_hooked_module_copies_with_its_own_chain(copier):
    """Our hooks' chain links are objects, not diffusers' closures: a copy runs its own hooks on itself."""
    module = _Double()
    register_hook(module, _Add(1), "ours")
    register_hook(module, _Offset(3), "outer")
    twin = copier(module)
    assert _value(twin) == _value(module) == 2 * (1 + 3) + 1
    _registry(twin).get_hook("ours").n = 100
    assert (_value(twin), _value(module)) == (2 * 4 + 100, 9)
    remove_hook(twin, "outer")
    remove_hook(twin, "ours")
    assert _value(twin) == 2 and _value(module) == 9 and "forward" not in vars(twin)
    remove_hook(module, "outer")
    remove_hook(module, "ours")
    assert _value(module) == 2 and "forward" not in vars(module)


def test_an_unhooked_view_runs_the_plain_forward_and_leaves_the_original_hooked():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), _Double())
    register_hook(model[1], _Add(1), "hgc_add")
    _registry(model[0]).register_hook(_Add(10), "theirs")
    seen = []
    model.register_forward_hook(lambda m, args, out: seen.append(out))
    x = torch.ones(1, 2)
    hooked = model(x)
    view = unhooked_view(model)
    plain = 2 * torch.nn.functional.linear(x, model[0].weight, model[0].bias)
    assert torch.equal(view(x), plain) and not torch.equal(hooked, plain)
    assert len(seen) == 1  # the view carries no PyTorch hook either
    assert view[0].weight is model[0].weight  # shared, not copied
    assert torch.equal(model(x), hooked) and len(seen) == 2  # the original keeps every hook
