"""The profile artifact on its own: a toy profile, round trips, and refusal of damaged files."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
from _profile_fixtures import ATTENTIONS, STEPS, make_meta, make_tensors

from hgc_tune.errors import ProfileError
from hgc_tune.profile import Profile
from hgc_tune.profile._artifact import META_FILE, TENSOR_FILE


@pytest.fixture
def saved(tmp_path):
    folder = tmp_path / "run"
    Profile(make_meta(), make_tensors()).save(folder)
    return folder


def test_toy_round_trip(saved):
    loaded = Profile.load(saved)
    for name, array in make_tensors().items():
        np.testing.assert_array_equal(loaded.tensors()[name], array)
    assert np.isnan(loaded.stat("mean_cos", "controlnet")[0])
    assert loaded.negative_prompts == [None, "c"]
    assert loaded.resolution == (16, 8)
    digest = hashlib.sha256((saved / TENSOR_FILE).read_bytes()).hexdigest()
    assert loaded.meta["tensor_file"]["sha256"] == digest
    assert not [p for p in saved.iterdir() if p.name not in (META_FILE, TENSOR_FILE)]  # no temp folder left


def test_truncated_tensor_file_is_refused(saved):
    blob = (saved / TENSOR_FILE).read_bytes()
    (saved / TENSOR_FILE).write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ProfileError, match="truncated or modified"):
        Profile.load(saved)


def test_tampered_tensor_file_is_refused(saved):
    blob = bytearray((saved / TENSOR_FILE).read_bytes())
    blob[-1] ^= 0xFF  # one flipped byte in the last tensor's data
    (saved / TENSOR_FILE).write_bytes(bytes(blob))
    with pytest.raises(ProfileError, match="does not match its recorded sha256"):
        Profile.load(saved)


def _rewrite(folder, tensor_bytes: bytes) -> None:
    """Replace the tensor file and record its sha256, as a careful forger would."""
    (folder / TENSOR_FILE).write_bytes(tensor_bytes)
    meta = json.loads((folder / META_FILE).read_text())
    meta["tensor_file"]["sha256"] = hashlib.sha256(tensor_bytes).hexdigest()
    (folder / META_FILE).write_text(json.dumps(meta))


def test_unparseable_tensor_file_with_matching_sha_is_refused(saved):
    _rewrite(saved, b"\xff" * 64)
    with pytest.raises(ProfileError, match="not a valid safetensors file"):
        Profile.load(saved)


def test_missing_tensor_is_refused(saved):
    from safetensors.numpy import save

    tensors = make_tensors()
    del tensors["std_js/" + ATTENTIONS[0]]
    _rewrite(saved, save(tensors))
    with pytest.raises(ProfileError, match="misses.*std_js"):
        Profile.load(saved)


def test_wrong_shape_tensor_is_refused(saved):
    from safetensors.numpy import save

    tensors = make_tensors()
    tensors["mean_cos/controlnet"] = np.zeros(STEPS + 1, dtype=np.float32)
    _rewrite(saved, save(tensors))
    with pytest.raises(ProfileError, match=r"'mean_cos/controlnet' must be float32 \[3\]"):
        Profile.load(saved)


def test_other_schema_version_is_refused(saved):
    meta = json.loads((saved / META_FILE).read_text())
    meta["schema_version"] = 2
    (saved / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ProfileError, match="`schema_version` must be 1"):
        Profile.load(saved)


def test_invalid_json_is_refused(saved):
    (saved / META_FILE).write_text('{"format": "hgc-tune-profile", ')
    with pytest.raises(ProfileError, match="malformed JSON at line 1"):
        Profile.load(saved)


def test_missing_files_are_refused(saved, tmp_path):
    with pytest.raises(ProfileError, match="run `hgc-tune profile"):
        Profile.load(tmp_path / "nowhere")
    (saved / TENSOR_FILE).unlink()
    with pytest.raises(ProfileError, match="profile.safetensors is missing"):
        Profile.load(saved)


def test_inconsistent_profiles_cannot_be_built():
    meta = make_meta()
    meta["prompts"] = ["only one"]
    with pytest.raises(ProfileError, match="`prompts` must have one entry per seed"):
        Profile(meta, make_tensors())
    tensors = make_tensors()
    tensors["reference/images"] = tensors["reference/images"].astype(np.float32)
    with pytest.raises(ProfileError, match="'reference/images' must be uint8"):
        Profile(make_meta(), tensors)
    tensors = make_tensors()
    tensors["extra/thing"] = np.zeros(1, dtype=np.float32)
    with pytest.raises(ProfileError, match="unexpected tensors"):
        Profile(make_meta(), tensors)


def test_a_failed_move_of_the_metadata_puts_the_old_tensors_back(saved, monkeypatch):
    """The tensors moved, then the metadata's move fails: the old profile is whole again, nothing is left."""
    before = {name: (saved / name).read_bytes() for name in (META_FILE, TENSOR_FILE)}
    newer = make_tensors()
    newer["mean_cos/controlnet"] = np.full(STEPS, 0.5, dtype=np.float32)
    real_replace = os.replace

    def replace(src, dst):
        if str(dst).endswith(META_FILE):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        Profile(make_meta(), newer).save(saved)
    monkeypatch.undo()
    assert sorted(p.name for p in saved.iterdir()) == [META_FILE, TENSOR_FILE]  # temporary files removed
    assert {name: (saved / name).read_bytes() for name in (META_FILE, TENSOR_FILE)} == before
    Profile.load(saved)


def test_crash_between_the_two_moves_is_detected(saved):
    """A save killed after the tensors moved leaves a profile that fails loudly, never a silent mix."""
    newer = make_tensors()
    newer["mean_cos/controlnet"] = np.full(STEPS, 0.5, dtype=np.float32)
    pid = os.fork()
    if pid == 0:  # the writer, killed (no cleanup runs) as it is about to move the metadata
        real_replace = os.replace

        def replace(src, dst):
            if str(dst).endswith(META_FILE):
                os._exit(9)
            real_replace(src, dst)

        os.replace = replace
        try:
            Profile(make_meta(), newer).save(saved)
        finally:
            os._exit(0)
    assert os.waitpid(pid, 0)[1] >> 8 == 9
    with pytest.raises(ProfileError, match="recorded sha256"):
        Profile.load(saved)
    assert sorted(p.name for p in saved.iterdir()) == [META_FILE, TENSOR_FILE]  # temporary files removed


def test_save_into_a_file_path_is_refused(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(ProfileError, match="must be a folder"):
        Profile(make_meta(), make_tensors()).save(target)


def _dead_pid() -> int:
    import subprocess
    import sys

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_files_are_0644_and_a_killed_saves_leftovers_are_removed_next_time(saved):
    assert {oct((saved / name).stat().st_mode & 0o777) for name in (META_FILE, TENSOR_FILE)} == {"0o644"}
    # What a SIGKILL in the write window leaves: an older version's temporary folder, and a temporary file
    # of a process that no longer runs. A live writer's temporary file is not touched.
    (saved / ".profile-tmp-k3j4h5").mkdir()
    (saved / ".profile-tmp-k3j4h5" / TENSOR_FILE).write_bytes(b"half")
    (saved / f".{TENSOR_FILE}.hgc-tmp-{_dead_pid()}-abc.tmp").write_bytes(b"half")
    live = saved / f".{META_FILE}.hgc-tmp-{os.getpid()}-def.tmp"
    live.write_text("{")
    Profile(make_meta(), make_tensors()).save(saved)
    assert sorted(p.name for p in saved.iterdir()) == sorted([META_FILE, TENSOR_FILE, live.name])
    Profile.load(saved)


@pytest.mark.parametrize(
    "text",
    ["[" * 100_000 + "]" * 100_000, '{"format": ' + "[" * 500 + "]" * 500 + "}"],
    ids=["past-recursion-limit", "deep"],
)
def test_deeply_nested_metadata_is_a_profile_error(saved, text):
    (saved / META_FILE).write_text(text)
    with pytest.raises(ProfileError, match=r"profile.json'.*JSON nested deeper than 64 levels"):
        Profile.load(saved)


def test_a_killed_saves_leftovers_are_removed_by_the_next_load_too(saved):
    (saved / ".profile-tmp-k3j4h5").mkdir()
    (saved / f".{TENSOR_FILE}.hgc-tmp-{_dead_pid()}-abc.tmp").write_bytes(b"half")
    live = saved / f".{META_FILE}.hgc-tmp-{os.getpid()}-def.tmp"
    live.write_text("{")
    Profile.load(saved)
    assert sorted(p.name for p in saved.iterdir()) == sorted([META_FILE, TENSOR_FILE, live.name])
