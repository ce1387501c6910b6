"""Several processes: strategy validation, the per-process training order, and DDP on CPU.

The end-to-end test runs `python run.py ... trainer.strategy=ddp trainer.devices=2` (gloo on
CPU; Lightning re-runs the command for rank 1) against the same run on one process with the
same global batch, on a tiny BERT without dropout, and compares what MLflow recorded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, build_tiny_bert, tiny_overrides, write_intents

from tunelab.base.errors import ConfigError
from tunelab.config.validate import load_config

# Two processes average their half-batch gradients where one process takes the whole batch:
# the same sums in another order, so float32 rounding differs by ~1e-7 per step.
LOSS_TOLERANCE = 1e-4


def problems_of(args: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(args)
    return caught.value.problems


def test_strategy_names_and_nodes_are_trainer_keys():
    _, run = load_config(
        [
            "experiment=quickstart",
            "trainer.strategy=ddp",
            "trainer.devices=2",
            "trainer.num_nodes=2",
        ]
    )
    assert (run.trainer.strategy, run.trainer.devices, run.trainer.num_nodes) == ("ddp", 2, 2)
    (problem,) = problems_of(["experiment=quickstart", "trainer.strategy=horovod"])
    assert problem.startswith("trainer.strategy") and "'ddp'" in problem and "'fsdp'" in problem


def test_sharded_strategies_need_gpus():
    (problem,) = problems_of(["experiment=quickstart", "trainer.strategy=fsdp"])
    assert "CUDA only" in problem and "trainer.accelerator=gpu" in problem


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("deepspeed") is not None, reason="deepspeed installed"
)
def test_deepspeed_says_what_to_install():
    problems = problems_of(["experiment=lora_mistral", "trainer.strategy=deepspeed_stage_2"])
    assert any("pip install deepspeed" in p for p in problems)


def test_quantised_bases_across_gpus():
    load_config(["experiment=qlora_mistral", "trainer.strategy=ddp", "trainer.devices=2"])
    load_config(["experiment=qlora_mistral_fsdp"])
    (problem,) = problems_of(["experiment=qlora_mistral", "trainer.strategy=fsdp"])
    assert "model.quant_storage (uint8)" in problem and "bfloat16" in problem
    (problem,) = problems_of(["experiment=qlora_mistral_fsdp", "model.quantize=int8"])
    assert "int8" in problem and "trainer.strategy=ddp" in problem
    problems = problems_of(["experiment=qlora_mistral", "trainer.strategy=deepspeed_stage_3"])
    assert any("cannot partition bitsandbytes" in p for p in problems)


def test_sweeps_train_one_process_per_trial():
    from sweeps.space import load_sweep_config

    with pytest.raises(ConfigError) as caught:
        load_sweep_config(
            ["experiment=lora_minilm_banking77", "sweep=lora_rank_lr", "trainer.devices=2"]
        )
    assert any("one sweep worker per GPU" in p for p in caught.value.problems)


def test_rank_blocks_rebuild_the_global_batches():
    from datamodules.sharding import rank_blocks

    order = list(range(10))
    ranks = [rank_blocks(order, 2, 2, r) for r in (0, 1)]
    assert ranks == [[0, 1, 4, 5, 8], [2, 3, 6, 7, 9]]
    padded = [rank_blocks(list(range(7)), 2, 2, r) for r in (0, 1)]
    assert padded == [[0, 1, 4, 5], [2, 3, 6, 0]]  # padded with the first row: equal steps


def test_rank_shard_forwards_epoch_and_resumes_its_own_batches():
    from datamodules.resumable import EpochOrder, shuffled
    from datamodules.sharding import RankShard

    inner = EpochOrder(shuffled(12), 12, 2, seed=3)
    shards = [RankShard(inner, 2, 2, r) for r in (0, 1)]
    for shard in shards:
        shard.set_epoch(1)
    full = inner.order(__import__("datamodules.resumable").resumable.epoch_generator(3, 1))
    assert sorted(list(shards[0]) + list(shards[1])) == sorted(full)
    assert len(shards[0]) == 6 and shards[0].epoch == 1
    first = list(shards[0])
    shards[0].resume_at(1, 2)
    assert list(shards[0]) == first[4:]


RANK_KEYS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")


def test_only_rank_zero_makes_the_run_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from tunelab.base.ranks import is_rank_zero
    from tunelab.run import distributed

    for key in RANK_KEYS:
        monkeypatch.delenv(key, raising=False)

    def make(base: Path | None) -> Path:
        folder = tmp_path / "run"
        folder.mkdir()
        return folder

    def never(base: Path | None) -> Path:
        raise AssertionError("only rank 0 creates the folder")

    assert distributed.shared_run_dir(None, make) == tmp_path / "run"
    monkeypatch.setenv("RANK", "1")  # torchrun: started beside rank 0, writes nothing
    assert not distributed.shared_run_dir(None, never).exists()
    monkeypatch.delenv("RANK")
    monkeypatch.setenv("NODE_RANK", "1")  # the first process of the second node
    assert not is_rank_zero()


def test_processes_launched_by_rank_zero_continue_its_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Lightning's launcher starts ranks 1..N from rank 0 once it marked its run running."""
    import os
    import socket
    from types import SimpleNamespace

    from tunelab.run import distributed, resume

    for key in RANK_KEYS:
        monkeypatch.delenv(key, raising=False)
    run = SimpleNamespace(output_root=str(tmp_path), name="exp")  # what finding runs reads
    folder = tmp_path / "exp" / "2026-12-02_10-00-00"
    (folder / "checkpoints").mkdir(parents=True)
    parent = {"status": "running", "run_id": "abc", "host": socket.gethostname()}
    resume_file = folder / resume.CHECKPOINT
    resume_file.write_bytes(b"state")

    def select() -> None:
        raise AssertionError("a launched process takes its parent's decision")

    (folder / resume.STATE_FILE).write_text(json.dumps(parent | {"pid": os.getppid()}))
    assert distributed.rank_zero_previous(run, lambda: None) is None  # rank 0 decides itself
    monkeypatch.setenv("LOCAL_RANK", "1")
    chosen = distributed.rank_zero_previous(run, select)
    assert chosen == resume.Previous(folder, "abc", str(resume_file))
    (folder / resume.STATE_FILE).write_text(json.dumps(parent | {"pid": os.getppid() + 1}))
    assert distributed.rank_zero_previous(run, lambda: None) is None  # not our parent's run


def test_rank_zero_exports_a_sharded_model_from_its_whole_checkpoint(monkeypatch):
    from types import SimpleNamespace

    from tunelab.run import checkpoint, distributed

    class FSDPStrategy:  # the name is what counts
        pass

    monkeypatch.setattr(checkpoint, "load_module", lambda path: ("loaded", str(path)))
    module = object()
    ddp = SimpleNamespace(strategy=SimpleNamespace())
    assert distributed.exportable(ddp, module, "best.ckpt") is module
    fsdp = SimpleNamespace(strategy=FSDPStrategy())
    assert distributed.exportable(fsdp, module, "best.ckpt") == ("loaded", "best.ckpt")
    assert distributed.exportable(fsdp, module, None) is module  # nothing saved: as it is


def tiny_bert_without_dropout(folder: Path) -> Path:
    """A 2-layer BERT without dropout: one and two processes then see the same network."""
    return build_tiny_bert(folder, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def run_cli(
    args: list[str], cwd: Path, launcher: tuple[str, ...] = (sys.executable,)
) -> subprocess.CompletedProcess:
    """`run.py args` in `cwd` (started by `launcher`, e.g. torchrun); it must exit 0."""
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run(
        [*launcher, str(REPO / "run.py"), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


def recorded(db: Path) -> tuple[list, dict[str, list[float]]]:
    """The runs of a store, and the history of train/loss, val/loss and the test metrics."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    keys = ["train/loss", "val/loss", "val/acc", "test/acc", "test/loss"]
    history = {
        k: [m.value for m in sorted(client.get_metric_history(runs[0].info.run_id, k), key=step)]
        for k in keys
    }
    return runs, history


def step(metric) -> tuple[int, int]:
    return metric.step, metric.timestamp


def quickstart_on_cpu(tmp_path: Path, *extra: str) -> list[str]:
    """The quickstart on a dropout-free tiny BERT and the intents, batches in a fixed order."""
    model = tiny_bert_without_dropout(tmp_path / "bert")
    data = write_intents(tmp_path / "data" / "intents").parent
    common = tiny_overrides(model, data, "method.dropout=0.0", "data.group_by_length=false")
    return [*common, "experiment=quickstart", "trainer.accelerator=cpu", *extra]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_matches_one_process(tmp_path: Path):
    common = quickstart_on_cpu(
        tmp_path, "data.val_size=16", "data.eval_batch_size=8", "trainer.max_epochs=2"
    )
    run_cli([*common, "data.batch_size=16", "logger.tracking_uri=sqlite:///one.db"], tmp_path)
    out = run_cli(
        [
            *common,
            "data.batch_size=8",  # per process: the same global batch of 16
            "trainer.strategy=ddp",
            "trainer.devices=2",
            "logger.tracking_uri=sqlite:///two.db",
        ],
        tmp_path,
    )
    assert out.stdout.count("MLflow run id") == 1  # one summary
    _, one = recorded(tmp_path / "one.db")
    two_runs, two = recorded(tmp_path / "two.db")
    assert len(two_runs) == 1 and two_runs[0].info.status == "FINISHED"
    assert len(one["train/loss"]) == len(two["train/loss"]) == 10  # 80 rows / 16 x 2 epochs
    for key, values in one.items():
        assert two[key] == pytest.approx(values, abs=LOSS_TOLERANCE), key
    run_dirs = list((tmp_path / "outputs" / "quickstart_intents").iterdir())
    assert len(run_dirs) == 2  # one folder per run, not per process
    one_dir, two_dir = ({p.name for p in d.rglob("*")} for d in run_dirs)
    assert one_dir == two_dir  # the same files, written once (no per-process copies)


@pytest.mark.slow
def test_ddp_run_killed_mid_training_resumes_to_the_uninterrupted_result(tmp_path: Path):
    """SIGKILL to the whole process group (as a scheduler does), then the same command again."""
    import signal
    import time

    args = quickstart_on_cpu(tmp_path, "trainer.strategy=ddp")
    args += ["trainer.devices=2", "data.batch_size=8", "data.val_size=16", "trainer.max_epochs=10"]
    args += ["trainer.checkpoint_every_n_steps=2"]
    once, twice = tmp_path / "once", tmp_path / "twice"
    once.mkdir(), twice.mkdir()
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    command = [sys.executable, str(REPO / "run.py"), *args]
    victim = subprocess.Popen(command, cwd=twice, env=env, start_new_session=True)
    while not list(twice.glob("outputs/*/*/checkpoints/resume.ckpt")):
        assert victim.poll() is None, "the run ended before its first resume checkpoint"
        time.sleep(0.2)
    time.sleep(0.5)  # 50 steps in all: the kill lands mid-training, after a resume checkpoint
    assert victim.poll() is None, "the run finished before it could be killed"
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    run_cli(args, twice)
    run_cli(args, once)

    [resumed], after = recorded(twice / "mlflow.db")
    _, clean = recorded(once / "mlflow.db")
    assert resumed.info.status == "FINISHED"  # the same run, continued (no second run)
    assert len(list((twice / "outputs" / "quickstart_intents").iterdir())) == 1
    for key in ("val/acc", "test/acc", "test/loss"):
        assert after[key][-1] == pytest.approx(clean[key][-1], abs=LOSS_TOLERANCE), key


@pytest.mark.slow
def test_torchrun_on_a_new_sqlite_store_makes_one_finished_run(tmp_path: Path):
    """torchrun starts both ranks at once: only one may create the store's tables."""
    args = quickstart_on_cpu(tmp_path, "trainer.strategy=ddp", "trainer.devices=2")
    args += ["data.batch_size=8", "data.val_size=16"]
    args += ["logger.tracking_uri=sqlite:///new.db", "trainer.max_epochs=1"]
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2")
    run_cli(args, tmp_path, launcher=torchrun)
    [run], _ = recorded(tmp_path / "new.db")
    assert run.info.status == "FINISHED"
