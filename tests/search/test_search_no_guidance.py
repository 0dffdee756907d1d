"""``SearchConfig(search_guidance=False)`` (``--no-guidance-window``): a search whose policies keep full CFG
at every step, so what they save comes from caching alone."""

from __future__ import annotations

import optuna
import pytest
from _search_fixtures import (
    BUDGET,
    SD15_KEYS,
    copy_profile,
    one_torch_thread,  # noqa: F401 (an autouse fixture)
    synthetic_space,
)

from hgc_tune.errors import SearchError
from hgc_tune.search import SearchConfig, prepare_search
from hgc_tune.search._space import default_peer_names


def _sampled_guidance(guidance: bool, trials: int = 300) -> set[object]:
    """The guidance windows of the policies a random search over the space proposes."""
    space = synthetic_space(SD15_KEYS, 20, guidance=guidance)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    found = set()
    for _ in range(trials):
        trial = study.ask()
        found.add(space.build(space.suggest(trial)).guidance)
        study.tell(trial, 0.0)
    return found


def test_the_space_never_proposes_a_guidance_window():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    assert "guidance.cfg_until" not in synthetic_space(SD15_KEYS, 20, guidance=False).distributions()
    assert _sampled_guidance(False) == {None}
    # the same trials with the guidance window in the space do truncate CFG
    assert len(_sampled_guidance(True) - {None}) > 1


def test_default_peers_leave_out_those_that_truncate_cfg():
    names = default_peer_names(20, cfg=False)
    assert "tgate-g10-cfg" in default_peer_names(20) and "tgate-g10-cfg" not in names
    space = synthetic_space(SD15_KEYS, 20, guidance=False)
    for name in names:
        assert space.build(space.peer_params(name)).guidance is None


@pytest.fixture
def profile_dir(tiny_pipe, tmp_path_factory, tmp_path):
    return copy_profile(tiny_pipe, tmp_path_factory.getbasetemp(), tmp_path / "profile")


def test_a_search_without_the_guidance_window_enqueues_no_cfg_peer(tiny_pipe, profile_dir, tmp_path):
    storage = f"sqlite:///{tmp_path / 's.db'}"
    config = SearchConfig(budget=BUDGET, search_guidance=False, storage=storage)
    session = prepare_search(profile_dir, tiny_pipe, config)
    assert not session.space.guidance and "guidance.cfg_until" not in session.space.distributions()
    assert session.peers and not any(name.endswith("-cfg") for name in session.peers)
    # a peer that truncates CFG, named on purpose, is refused before any work
    with pytest.raises(SearchError, match="truncates CFG"):
        prepare_search(
            profile_dir,
            tiny_pipe,
            SearchConfig(budget=BUDGET, search_guidance=False, peers=("tgate-g2-cfg",)),
        )
