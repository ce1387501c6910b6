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
from conftest import StopAt, runs, tiny_overrides

import run as cli
from tunelab.run import resume
from tunelab.run.checkpoint import read_checkpoint

RECIPE = "experiment=full_minilm_banking77"
EXTRA = (
    "data.batch_size=8",
    "trainer.max_epochs=2",
    "trainer.checkpoint_every_n_steps=3",
    "optim.lr=1e-2",
)


def args_for(tiny_bert: Path, intent_data: Path, *more: str) -> list[str]:
    return [RECIPE, *tiny_overrides(tiny_bert, intent_data, *EXTRA), *more]


@pytest.fixture()
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 MB tmpfs mounted for the test (root only; skipped where mount is refused)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    root = [] if os.geteuid() == 0 else ["sudo", "-n"]  # CI runners: passwordless sudo
    if shutil.which("mount") is None or (root and shutil.which("sudo") is None):
        pytest.skip("mounting a tmpfs needs root (or sudo) and mount(8): no real small disk here")
    done = subprocess.run(
        [*root, "mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(disk)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"mount -t tmpfs was refused here ({done.stderr.decode().strip()})")
    try:
        yield disk
    finally:
        subprocess.run([*root, "umount", "-l", str(disk)], check=False)


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
    import tunelab.run.pipeline as pipeline

    build = pipeline.build_trainer

    def build_with(run, run_dir, logger, callbacks, resume_from=None):
        return build(run, run_dir, logger, [callback, *callbacks], resume_from)

    monkeypatch.setattr(pipeline, "build_trainer", build_with)


# ----------------------------------------------------------------------------- disk full
# id, step after which the disk is full (None: after testing), what no longer fits
DISK_FULL = [
    ("checkpoint", 4, "resume.ckpt.staged does not fit in"),  # a step's state, staged
    ("export", None, "the run's outputs (export, config, metrics) does not fit in"),
]


@pytest.mark.slow
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
    [folder] = (small_disk / "outputs" / "full_minilm_banking77_intents").iterdir()
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
    from tunelab.base.errors import DiskFullError
    from tunelab.run.checkpoint import write_atomic

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

    from tunelab.base.errors import CorruptFileError
    from tunelab.run.checkpoint import load_module

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


QUICK = (  # one batch of each stage: the rows below need a finished run, not a trained one
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
)


def cut_arrow(cache: Path) -> Path:
    [arrow] = cache.glob("*/train/*.arrow")
    truncate(arrow)
    return arrow


def cut_meta(cache: Path) -> Path:
    [meta] = cache.glob("*/meta.json")
    truncate(meta)
    return meta


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("damage", [cut_arrow, cut_meta], ids=["split_file_cut", "meta_cut"])
def test_a_damaged_prepared_data_cache_is_named_and_prepared_again(
    workdir, monkeypatch, capsys, tiny_bert, intent_data, damage
):
    monkeypatch.setenv("TUNELAB_CACHE", str(workdir / "cache"))
    args = args_for(tiny_bert, intent_data, *QUICK, "export.save_model=false", "resume=false")
    assert cli.main(args) == 0
    damaged = damage(workdir / "cache")
    capsys.readouterr()
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("warning: prepared data in")]
    assert str(damaged.relative_to(workdir / "cache").parts[0]) in line
    assert "preparing it again" in line and "Traceback" not in err
    assert [r.info.status for r in runs(workdir)] == ["FINISHED", "FINISHED"]


@pytest.mark.usefixtures("one_torch_thread")
def test_a_cut_model_info_is_named_by_predict(workdir, capsys, tiny_bert, intent_data):
    import predict

    args = args_for(tiny_bert, intent_data, *QUICK, "logger.log_model=false")
    assert cli.main(args) == 0
    [run_dir] = (workdir / "outputs" / "full_minilm_banking77_intents").iterdir()
    info = run_dir / "export" / "model_info.json"
    info.write_text(info.read_text()[:60])  # cut mid-way, as a copy interrupted leaves it
    (workdir / "texts.csv").write_text("text\ni lost my card\n")
    capsys.readouterr()
    source = f"source={run_dir / 'export'}"
    assert predict.main([source, "input=texts.csv", "output=out.csv"]) == 1
    err = capsys.readouterr().err
    assert f"error: {info} is unreadable" in err
    assert "runs:/<run_id>/model" in err and "Traceback" not in err


# ----------------------------------------------------------------------------- signals
class SignalInTest(L.Callback):
    """Record SIGTERM as its handler does, at the first test batch."""

    def on_test_batch_start(self, *args) -> None:
        import signal

        from tunelab.base import signals

        signals.requested().signum = signal.SIGTERM


def signal_in_test(monkeypatch: pytest.MonkeyPatch) -> None:
    with_callback(monkeypatch, SignalInTest())


def signal_in_export(monkeypatch: pytest.MonkeyPatch) -> None:
    import signal

    import tunelab.serving.mlflow_model as mlflow_model
    from tunelab.base import signals

    log_model = mlflow_model.log_run_model

    def slow_log(*args, **kwargs):
        signals.requested().signum = signal.SIGTERM  # arrives while the model is being logged
        return log_model(*args, **kwargs)

    monkeypatch.setattr(mlflow_model, "log_run_model", slow_log)


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("phase,inject", [("test", signal_in_test), ("export", signal_in_export)])
def test_sigterm_in_test_or_export_stops_resumable_not_finished(
    workdir, monkeypatch, capsys, tiny_bert, intent_data, phase, inject
):
    args = args_for(tiny_bert, intent_data, *QUICK)
    with monkeypatch.context() as patch:
        inject(patch)
        assert cli.main(args) == 143
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and "resume with: python run.py" in err
    [killed] = runs(workdir)
    assert killed.info.status == "KILLED"
    [folder] = (workdir / "outputs" / "full_minilm_banking77_intents").iterdir()
    state = resume.read_state(folder)
    assert (state["status"], state["phase"]) == ("killed", phase)
    assert (folder / resume.CHECKPOINT).is_file()  # what the rerun continues from
    assert cli.main(args) == 0
    [finished] = runs(workdir)
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert (folder / "test_metrics.json").is_file() and (folder / "export").is_dir()


def wait_for(predicate: Callable[[], bool], proc: subprocess.Popen, what: str) -> None:
    import time

    deadline = time.time() + 600
    while not predicate():
        assert proc.poll() is None, f"{what}: the run ended first\n{proc.communicate()}"
        assert time.time() < deadline, f"{what}: not within 600 s"
        time.sleep(0.05)


def phase_of(folder: Path) -> str | None:
    states = [resume.read_state(p) for p in folder.glob("outputs/*/*")]
    return (states[0] or {}).get("phase") if states else None


@pytest.mark.slow
def test_a_real_sigterm_during_the_test_phase_exits_143_and_the_rerun_finishes(
    tmp_path, tiny_bert, intent_data
):
    """A real run.py process, 1,500 test rows read one at a time, SIGTERM once testing began."""
    import csv
    import signal

    from test_resume import start

    data = tmp_path / "data"
    shutil.copytree(intent_data / "intents", data / "intents")
    with open(intent_data / "intents" / "test.csv") as handle:
        rows = list(csv.reader(handle))
    with open(data / "intents" / "test.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([rows[0], *(rows[1:] * (1500 // (len(rows) - 1) + 1))])
    args = args_for(tiny_bert, data, "trainer.max_epochs=1", "data.eval_batch_size=1")
    proc = start(tmp_path, args)
    wait_for(lambda: phase_of(tmp_path) == "test", proc, "the test phase")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in err and "Traceback" not in err
    [killed] = runs(tmp_path)
    assert killed.info.status == "KILLED"
    [folder] = (tmp_path / "outputs" / "full_minilm_banking77_intents").iterdir()
    assert resume.read_state(folder)["phase"] == "test" and not (folder / "export").exists()

    rerun = start(tmp_path, args)
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    [finished] = runs(tmp_path)
    assert finished.info.run_id == killed.info.run_id and finished.info.status == "FINISHED"
    assert "test/acc" in finished.data.metrics


# ----------------------------------------------------------------------------- neighbours
def start_together(folder: Path, args: list[str], n: int = 2) -> list[tuple[int, str]]:
    """`n` real run.py processes started at once (one torch thread each); (exit code, stderr)."""
    from test_resume import start

    procs = [start(folder, args) for _ in range(n)]
    return [(p.wait(timeout=900), p.communicate()[1]) for p in procs]


def folders(folder: Path) -> list[Path]:
    return sorted((folder / "outputs" / "full_minilm_banking77_intents").iterdir())


@pytest.mark.slow
def test_two_runs_started_at_once_keep_their_own_folders_runs_and_cache(
    tmp_path, monkeypatch, tiny_bert, intent_data
):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))  # empty: both want to build it
    args = args_for(tiny_bert, intent_data, "trainer.max_epochs=1", "logger.log_model=false")
    results = start_together(tmp_path, args)
    assert [code for code, _ in results] == [0, 0], results
    finished = runs(tmp_path)
    assert len({r.info.run_id for r in finished}) == 2
    assert {r.info.status for r in finished} == {"FINISHED"}
    made = folders(tmp_path)
    assert len(made) == 2
    assert {resume.read_state(f)["run_id"] for f in made} == {r.info.run_id for r in finished}
    for folder in made:
        assert (folder / "test_metrics.json").is_file() and (folder / "export").is_dir()
    # one prepared entry, built once and read by both; nothing half-written left
    assert len([p for p in (tmp_path / "cache").iterdir() if p.is_dir()]) == 1
    assert not list((tmp_path / "cache").glob("*.tmp"))
    same = [r.data.metrics["test/acc"] for r in finished]  # same seed, same data, same result
    assert same[0] == same[1]


@pytest.mark.slow
@pytest.mark.usefixtures("one_torch_thread")
def test_two_starts_at_once_never_resume_the_same_interrupted_run(
    workdir, monkeypatch, tiny_bert, intent_data
):
    args = args_for(tiny_bert, intent_data, "logger.log_model=false")
    with monkeypatch.context() as patch:
        with_callback(patch, StopAt(5))
        assert cli.main(args) == 143
    [killed] = runs(workdir)
    results = start_together(workdir, args)
    assert [code for code, _ in results] == [0, 0], results
    finished = runs(workdir)
    assert len(finished) == 2 and {r.info.status for r in finished} == {"FINISHED"}
    assert killed.info.run_id in {r.info.run_id for r in finished}  # one continued it
    assert len(folders(workdir)) == 2  # the other started its own


class CutBest(L.Callback):
    """Cut the best checkpoint short once training ended, before the test stage reads it."""

    def on_train_end(self, trainer, *args) -> None:
        truncate(Path(trainer.checkpoint_callback.best_model_path))


@pytest.mark.usefixtures("one_torch_thread")
def test_a_best_checkpoint_damaged_during_the_run_is_named_and_the_rerun_finishes(
    workdir, monkeypatch, capsys, tiny_bert, intent_data
):
    args = args_for(tiny_bert, intent_data, "trainer.max_epochs=1")
    with monkeypatch.context() as patch:
        with_callback(patch, CutBest())
        assert cli.main(args) == 1
    err = capsys.readouterr().err
    [line] = [x for x in err.splitlines() if x.startswith("error: checkpoint ")]
    assert "best-" in line and "is unreadable" in line and "rerun the same command" in line
    assert "Traceback" not in err
    [folder] = folders(workdir)
    assert resume.read_state(folder)["status"] == "stopped"
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "warning: best checkpoint" in err and "the final weights are tested" in err
    [finished] = runs(workdir)
    assert finished.info.status == "FINISHED" and "test/acc" in finished.data.metrics


@pytest.mark.usefixtures("one_torch_thread")
def test_an_unreadable_run_json_is_named_and_a_new_run_starts(
    workdir, monkeypatch, capsys, tiny_bert, intent_data
):
    args = args_for(tiny_bert, intent_data, "trainer.max_epochs=1", "export.save_model=false")
    with monkeypatch.context() as patch:
        with_callback(patch, StopAt(2))
        assert cli.main(args) == 143
    [folder] = folders(workdir)
    truncate(folder / resume.STATE_FILE)
    capsys.readouterr()
    assert cli.main([*args, f"resume={folder}"]) == 2
    assert f"{folder / resume.STATE_FILE} is unreadable" in capsys.readouterr().err
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert f"warning: {folder.relative_to(workdir) / resume.STATE_FILE} is unreadable" in err
    assert len(folders(workdir)) == 2
    assert sorted(r.info.status for r in runs(workdir)) == ["FINISHED", "KILLED"]
