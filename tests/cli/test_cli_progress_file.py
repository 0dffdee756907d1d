"""Progress events between processes: a child appends JSON lines, the parent follows the file."""

from __future__ import annotations

import subprocess
import sys

from hgc_tune.cli._progress_file import EventReader, EventWriter, ProgressEvent

_CHILD = """
import sys
from hgc_tune.cli._progress_file import EventWriter
clock = iter([10.0, 11.5, 13.0])
write = EventWriter(sys.argv[1], "seg", clock=lambda: next(clock))
write("profile", 0, 2)
write("profile", 1, 2)
write("trial", 0, 20)
"""


def test_events_written_by_a_child_process_are_read_back_by_the_parent(tmp_path):
    path = tmp_path / "seg.progress.jsonl"
    reader = EventReader(path)
    assert reader.read() == []  # nothing written yet: no file, no error
    subprocess.run([sys.executable, "-c", _CHILD, str(path)], check=True)
    assert reader.read() == [
        ProgressEvent("seg", "profile", 0, 2, 10.0),
        ProgressEvent("seg", "profile", 1, 2, 11.5),
        ProgressEvent("seg", "trial", 0, 20, 13.0),
    ]
    assert reader.read() == []  # each event once
    EventWriter(path, "hed", clock=lambda: 14.0)("test", 3, 24)
    assert reader.read() == [ProgressEvent("hed", "test", 3, 24, 14.0)]


def test_a_line_being_written_waits_for_its_end_and_a_malformed_one_is_skipped(tmp_path):
    path = tmp_path / "events.jsonl"
    line = ProgressEvent("seg", "validation", 4, 36, 20.0).to_line()
    reader = EventReader(path)
    with open(path, "w") as f:
        f.write('{"task": "seg", "stage"\n')  # a malformed line (a writer killed mid-line, then restarted)
        f.write(line[:10])
    assert reader.read() == []
    with open(path, "a") as f:
        f.write(line[10:])
    assert reader.read() == [ProgressEvent("seg", "validation", 4, 36, 20.0)]
