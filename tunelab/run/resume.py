"""Which run a command resumes, and the state file that lets the next start decide.

Every run folder holds `run.json`: the MLflow run id, the status (`running`, `killed`,
`stopped` by a full disk, `failed`, `finished`), the phase (`fit`, `test`, `export`), the
process (host and pid) and the resolved config. On start,
`resume=true` (the default) looks through `<output_root>/<name>/` for the newest run that was
interrupted (killed, or `running` with no live process) and has the same config, and continues
it in the same folder and MLflow run from `checkpoints/resume.ckpt`. Runs found dead and not
resumed are marked killed (here and in MLflow), never left running. `resume=false` starts a new
run; `resume=<run folder or MLflow run id>` resumes that run, refusing a different config.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunelab.base.errors import ConfigError, notice
from tunelab.base.ranks import is_rank_zero
from tunelab.base.schema import RunConfig
from tunelab.tracking.run_info import flatten

STATE_FILE = "run.json"
CHECKPOINT = Path("checkpoints") / "resume.ckpt"
IGNORED = ("resume", "trainer.enable_progress_bar")  # keys that may change between attempts
INTERRUPTED = ("killed", "running", "stopped")  # stopped: by a resumable error (disk full)


@dataclass
class Previous:
    """An interrupted run to continue: its folder, MLflow run id and checkpoint (if any)."""

    run_dir: Path
    run_id: str
    checkpoint: str | None


def comparable(resolved: dict[str, Any]) -> dict[str, Any]:
    """The flat config two attempts of one run must share (as JSON keeps it: lists, not tuples)."""
    flat = json.loads(json.dumps(flatten(resolved), default=str))
    return {k: v for k, v in flat.items() if k not in IGNORED}


def read_state(run_dir: Path) -> dict[str, Any] | None:
    """The run's `run.json`, or None when missing or unreadable."""
    try:
        return json.loads((run_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return None


def write_state(run_dir: Path, status: str, **fields: Any) -> None:
    """Update the run's `run.json` (written atomically) with a status and other fields."""
    if not is_rank_zero():  # several processes (DDP): rank 0 keeps the state
        return
    state = (read_state(run_dir) or {}) | fields | {"status": status}
    tmp = run_dir / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(state, indent=2, default=str))
    os.replace(tmp, run_dir / STATE_FILE)


def mark_running(run_dir: Path, run_id: str, resolved: dict[str, Any]) -> None:
    """Record that this process now runs `run_dir` (MLflow run `run_id`)."""
    write_state(
        run_dir,
        "running",
        run_id=run_id,
        host=socket.gethostname(),
        pid=os.getpid(),
        config=comparable(resolved),
        phase="fit",  # then `test`, `export` (tunelab.run.pipeline)
    )


def finished(run_dir: Path) -> None:
    """Mark the run finished and drop its resume checkpoint (the best checkpoint stays)."""
    write_state(run_dir, "finished")
    (run_dir / CHECKPOINT).unlink(missing_ok=True)


def process_alive(host: Any, pid: Any) -> bool:
    """Whether process `pid` of `host` is alive; another machine's is assumed to be."""
    if host != socket.gethostname():
        return True
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def is_live(state: dict[str, Any]) -> bool:
    """Whether the process that runs this state is alive (on this host: checked by pid)."""
    return state.get("status") == "running" and process_alive(state.get("host"), state.get("pid"))


def differences(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """`key: was X, now Y` for every key that differs between two flat configs.

    Compared as JSON text, so `1` (one batch) and `1.0` (the whole split) differ.
    """
    keys = sorted(set(saved) | set(now))
    missing = "(unset)"
    return [
        f"{k}: was {saved.get(k, missing)!r}, now {now.get(k, missing)!r}"
        for k in keys
        if json.dumps(saved.get(k, missing)) != json.dumps(now.get(k, missing))
    ]


def previous_of(run_dir: Path, state: dict[str, Any]) -> Previous:
    """The `Previous` for a run folder and its state."""
    ckpt = run_dir / CHECKPOINT
    return Previous(run_dir, state["run_id"], str(ckpt) if ckpt.exists() else None)


def checked_previous(run_dir: Path, state: dict[str, Any], tracking_uri: str) -> Previous | None:
    """`previous_of`, or None when the run's `resume.ckpt` is damaged (truncated, corrupt).

    A damaged checkpoint is set aside as `resume.ckpt.corrupt`, the run marked failed (here and
    in MLflow) and a warning names it: the command then starts a new run.
    """
    from tunelab.run.checkpoint import damage
    from tunelab.tracking.store import set_run_status

    ckpt = run_dir / CHECKPOINT
    reason = damage(ckpt) if ckpt.exists() else None
    if reason is None:
        return previous_of(run_dir, state)
    ckpt.replace(ckpt.with_name(f"{ckpt.name}.corrupt"))
    notice(
        f"{ckpt} is unreadable ({reason}): that run cannot continue; the file is kept as "
        f"{ckpt.name}.corrupt, the run marked failed, and a new run starts from the beginning"
    )
    write_state(run_dir, "failed", reason=f"unreadable {CHECKPOINT}: {reason}")
    if state.get("run_id"):
        set_run_status(tracking_uri, state["run_id"], "FAILED")
    return None


def mark_killed(run_dir: Path, state: dict[str, Any], tracking_uri: str) -> None:
    """A dead run that is not resumed: killed in `run.json` and in MLflow."""
    from tunelab.tracking.store import set_run_status

    write_state(run_dir, "killed")
    if state.get("run_id"):
        set_run_status(tracking_uri, state["run_id"], "KILLED")


def run_folders(run: RunConfig) -> list[Path]:
    """This experiment's run folders with a state file, newest first."""
    base = Path(run.output_root) / run.name
    if not base.is_dir():
        return []
    found = [p for p in base.iterdir() if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: (p / STATE_FILE).stat().st_mtime, reverse=True)


def select(run: RunConfig, resolved: dict[str, Any]) -> Previous | None:
    """The interrupted run this command continues, or None to start a new one.

    Dead runs that are not continued are marked killed. `resume` is `run.resume`.

    Raises:
        ConfigError: `resume=<run>` names no run of this experiment, a finished run, or a run
            whose config differs (every differing key is listed).
    """
    base = Path(run.output_root) / run.name
    if not base.is_dir():
        return None
    import hashlib
    import tempfile

    from filelock import FileLock

    key = hashlib.sha256(str(base.resolve()).encode()).hexdigest()[:16]  # outside the outputs
    with FileLock(f"{tempfile.gettempdir()}/tunelab-resume-{key}.lock", timeout=600):
        chosen = _choose(run, comparable(resolved))
        if chosen is not None:  # claimed at once: a neighbour starting now sees it running
            write_state(chosen.run_dir, "running", host=socket.gethostname(), pid=os.getpid())
    return chosen


def _choose(run: RunConfig, now: dict[str, Any]) -> Previous | None:
    """`select`'s pick, the folder lock held."""
    choice = getattr(run, "resume", True)
    if isinstance(choice, str):
        return _named(run, choice, now)
    chosen = None
    uri = run.logger.tracking_uri
    for folder in run_folders(run):
        state = read_state(folder)
        if state is None:
            notice(f"{folder / STATE_FILE} is unreadable: that run is not resumed")
            continue
        if state.get("status") not in INTERRUPTED or is_live(state):
            continue
        if chosen is None and choice and not differences(state.get("config", {}), now):
            chosen = checked_previous(folder, state, uri)
        elif state.get("status") == "running":
            mark_killed(folder, state, uri)
    return chosen


def _named(run: RunConfig, choice: str, now: dict[str, Any]) -> Previous:
    """`resume=<run folder or MLflow run id>`: that run, checked."""
    folder = Path(choice).expanduser()
    if not (folder / STATE_FILE).is_file():
        matches = [p for p in run_folders(run) if (read_state(p) or {}).get("run_id") == choice]
        if not matches:
            raise ConfigError(
                [
                    f"resume={choice}: no run folder with {STATE_FILE} and no run of experiment "
                    f"'{run.name}' under {Path(run.output_root) / run.name} with that MLflow run "
                    "id; give a run folder or run id, resume=true (newest interrupted run) or "
                    "resume=false (a new run)"
                ]
            )
        folder = matches[0]
    state = read_state(folder)
    if state is None:
        raise ConfigError([f"resume={choice}: {folder / STATE_FILE} is unreadable; resume=false"])
    if state.get("status") == "finished":
        raise ConfigError([f"resume={choice}: that run already finished; use resume=false"])
    if is_live(state):
        raise ConfigError([f"resume={choice}: that run is still running (pid {state['pid']})"])
    diff = differences(state.get("config", {}), now)
    if diff:
        raise ConfigError(
            [
                f"resume={choice}: the config differs from that run's; " + "; ".join(diff),
                "drop the changed overrides to resume it, or use resume=false for a new run",
            ]
        )
    previous = checked_previous(folder, state, run.logger.tracking_uri)
    if previous is None:
        raise ConfigError([f"resume={choice}: its {CHECKPOINT} is unreadable; use resume=false"])
    return previous


def drop_if_empty(run_dir: Path) -> None:
    """Remove a failed run's folder when it holds no file but its state file."""
    if not run_dir.is_dir() or not is_rank_zero():
        return
    if all(p.name == STATE_FILE or not p.is_file() for p in run_dir.rglob("*")):
        shutil.rmtree(run_dir, ignore_errors=True)


def stopped(err: BaseException, logger: Any, run_dir: Path) -> BaseException:
    """Record how a run ended early (MLflow status, `run.json`) and what to raise for it.

    A signal (ours, Lightning's SIGTERM exit or Ctrl-C) marks the run killed and becomes
    `Interrupted`; anything else marks it failed, and a folder left without files is removed.
    """
    import signal as signals_module

    from tunelab.base.signals import Interrupted, requested

    signum = requested().signum
    if isinstance(err, Interrupted | KeyboardInterrupt | SystemExit) or signum is not None:
        logger.finalize("KILLED")
        write_state(run_dir, "killed")
        if isinstance(err, Interrupted):
            err.run_dir = err.run_dir or run_dir
            return err
        if type(err).__name__ == "SIGTERMException":
            signum = signals_module.SIGTERM
        return Interrupted(signum or signals_module.SIGINT, run_dir)
    logger.finalize("FAILED")
    from tunelab.run.checkpoint import named_disk_full

    err = named_disk_full(err, run_dir)
    if getattr(err, "resumable", False):  # a full disk: the same command continues the run
        write_state(run_dir, "stopped", reason=str(err).split(";")[0])
        return err
    write_state(run_dir, "failed")
    drop_if_empty(run_dir)
    return err
