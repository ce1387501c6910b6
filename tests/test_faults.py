"""Run-level faults, each injected for real: what the user sees, what is kept, how it recovers.

The table (docs/faults-run.md) row by row: a small tmpfs filled while a checkpoint or the export
is written, files truncated or corrupted between two attempts, a checkpoint holding a pickled
object, two runs started at once, SIGTERM during the test phase. Every row goes through `run.py`
as a user would (in process, or as a real subprocess where a signal or a neighbour is the fault).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import lightning as L
import pytest
from conftest import tiny_overrides
from mlflow import MlflowClient

import run as cli
from tunelab import resume
from tunelab.checkpoint import read_checkpoint

RECIPE = "experiment=full_minilm_banking77"
EXTRA = (
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.checkpoint_every_n_steps=3",
    "optim.lr=1e-2",
)


def args_for(tiny_bert: Path, intent_data: Path, *more: str) -> list[str]:
    return [RECIPE, *tiny_overrides(tiny_bert, intent_data, *EXTRA), *more]


def runs(folder: Path) -> list:
    client = MlflowClient(f"sqlite:///{folder}/mlflow.db")
    return client.search_runs([e.experiment_id for e in client.search_experiments()])


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 MB tmpfs mounted for the test (root only; skipped where mount is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8): the disk-full rows need a real disk")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs refused here ({done.stderr.decode().strip()})")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave: int = 256 * 1024) -> Path:
    """Take all of `disk`'s free space but `leave` bytes with one ballast file."""
    ballast = disk / "ballast"
    size = shutil.disk_usage(disk).free - leave
    with open(ballast, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, size)
    return ballast


class FillAt(L.Callback):
    """Fill the disk after training step `step` (or at the end of testing when None)."""

    def __init__(self, disk: Path, step: int | None):
        self.disk, self.step = disk, step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            fill(self.disk)

    def on_test_end(self, trainer, *args) -> None:
        if self.step is None:
            fill(self.disk)


def with_callback(monkeypatch: pytest.MonkeyPatch, callback: L.Callback) -> None:
    import tunelab.pipeline as pipeline

    build = pipeline.build_trainer

    def build_with(run, run_dir, logger, callbacks):
        return build(run, run_dir, logger, [callback, *callbacks])

    monkeypatch.setattr(pipeline, "build_trainer", build_with)


# ----------------------------------------------------------------------------- disk full
# id, step after which the disk is full (None: after testing), what no longer fits
DISK_FULL = [
    ("checkpoint", 4, "resume.ckpt does not fit in"),
    ("export", None, "the run's outputs (export, config, metrics) does not fit in"),
]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("case,step,message", DISK_FULL, ids=[c[0] for c in DISK_FULL])
def test_disk_full_stops_with_the_folder_and_the_space_then_resumes_once_freed(
    workdir, monkeypatch, capsys, small_disk, tiny_bert, intent_data, case, step, message
):
    args = args_for(tiny_bert, intent_data, f"output_root={small_disk / 'outputs'}")
    with monkeypatch.context() as patch:
        with_callback(patch, FillAt(small_disk, step))
        assert cli.main(args) == 1
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("error: disk full:")]
    assert message in line and str(small_disk / "outputs") in line and "free)" in line
    assert "needs " in line and "Traceback" not in err
    [folder] = (small_disk / "outputs" / "full_minilm_banking77").iterdir()
    kept = read_checkpoint(folder / resume.CHECKPOINT)  # the previous save, whole
    if case == "checkpoint":  # step 3's save; step 6's did not fit
        assert kept["global_step"] == 3
    else:  # the save after the last epoch: the rerun only tests and exports
        assert kept["epoch"] == 1 and kept["global_step"] > 6
    assert not list(folder.rglob("*.tmp"))  # no half-written file left behind
    assert resume.read_state(folder)["status"] == "stopped"
    [stopped] = runs(workdir)
    assert stopped.info.status == "FAILED"

    (small_disk / "ballast").unlink()  # space freed: the same command continues the run
    assert cli.main(args) == 0
    [finished] = runs(workdir)
    assert finished.info.run_id == stopped.info.run_id and finished.info.status == "FINISHED"
    assert resume.read_state(folder)["status"] == "finished"
    assert (folder / "export" / "config.json").is_file()


def test_write_atomic_keeps_the_old_file_when_the_new_one_does_not_fit(small_disk):
    from tunelab.checkpoint import write_atomic
    from tunelab.errors import DiskFullError

    target = small_disk / "resume.ckpt"
    write_atomic(target, b"old" * 1000)
    fill(small_disk, leave=64 * 1024)
    with pytest.raises(DiskFullError, match=rf"resume.ckpt does not fit in {small_disk}"):
        write_atomic(target, b"x" * (1024 * 1024))
    assert target.read_bytes() == b"old" * 1000 and sorted(small_disk.iterdir()) == sorted(
        [target, small_disk / "ballast"]
    )


Corrupt = Callable[[Path], None]


# ----------------------------------------------------------------------------- damaged files
class StopAt(L.Callback):
    """Request a stop after global step `step`, as the SIGTERM handler does."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        import signal

        from tunelab import signals

        if trainer.global_step == self.step:
            signals.requested().signum = signal.SIGTERM


def truncate(path: Path) -> None:
    """Cut a file to half its length, as a copy interrupted or a full disk leaves it."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip(path: Path) -> None:
    """Flip bytes in the middle of a file, its length unchanged."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    path.write_bytes(bytes(data))


def resume_file(folder: Path) -> Path:
    return next(folder.glob("outputs/*/*/checkpoints/resume.ckpt"))


def best_file(folder: Path) -> Path:
    return next(folder.glob("outputs/*/*/checkpoints/best-*.ckpt"))


# id, step the first attempt stops at, file damaged, damage, warning, whether the run continues
DAMAGED = [
    ("resume_truncated", 5, resume_file, truncate, "resume.ckpt is unreadable", False),
    ("resume_corrupt", 5, resume_file, flip, "resume.ckpt is unreadable", False),
    ("best_truncated", 13, best_file, truncate, "best checkpoint", True),
]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize(
    "case,step,target,damage,warning,continued", DAMAGED, ids=[c[0] for c in DAMAGED]
)
def test_a_damaged_checkpoint_is_named_and_the_run_continues_or_starts_fresh(
    workdir, monkeypatch, capsys, tiny_bert, intent_data, case, step, target, damage, warning,
    continued,
):  # fmt: skip
    args = args_for(tiny_bert, intent_data)
    with monkeypatch.context() as patch:
        with_callback(patch, StopAt(step))
        assert cli.main(args) == 143
    path = target(workdir)
    damage(path)
    capsys.readouterr()
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert warning in err and str(path.relative_to(workdir)) in err and "Traceback" not in err
    assert path.with_name(f"{path.name}.corrupt").is_file()  # set aside, not deleted
    statuses = sorted(r.info.status for r in runs(workdir))
    if continued:  # the same run went on; its next validation chose a new, whole best
        assert statuses == ["FINISHED"] and "final weights" in err
        read_checkpoint(best_file(workdir))
    else:  # a new run from the beginning; the damaged one is marked failed
        assert statuses == ["FAILED", "FINISHED"] and "a new run starts" in err
        assert resume.read_state(path.parent.parent)["status"] == "failed"


def test_a_checkpoint_holding_a_pickled_object_is_refused(workdir, tiny_bert, intent_data, capsys):
    """weights_only=True: a teacher .ckpt that would run code when unpickled is not loaded."""
    import torch

    from tunelab.checkpoint import load_module
    from tunelab.errors import CorruptFileError

    evil = workdir / "teacher.ckpt"  # a dict subclass is enough to need unpickling code
    torch.save({"state_dict": {}, "hyper_parameters": Sneaky(a=1)}, evil)
    with pytest.raises(CorruptFileError, match="holds objects other than tensors and plain data"):
        load_module(evil)
    args = [
        "experiment=distill_minilm_banking77",
        *tiny_overrides(tiny_bert, intent_data, f"method.teacher={evil}"),
    ]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"error: checkpoint {evil} holds objects other than tensors" in err
    assert "Traceback" not in err and not (workdir / "outputs").exists()


class Sneaky(dict):
    """A dict subclass: plain to look at, but unpickling it imports and runs this module's code."""
