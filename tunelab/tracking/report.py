"""Run one experiment from the command line and print its summary."""

from __future__ import annotations

import logging
import os
import sys

from tunelab.base.schema import RunConfig


def quiet_libraries() -> None:
    """Keep the terminal for the progress bar and the summary, not library chatter."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not sys.stderr.isatty():  # a log file: MLflow's download bar would write a line per file
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
        "alembic",
        "mlflow",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)
    # torchao (imported by peft whenever installed) reports its CUDA-only kernels it cannot
    # load on a CPU machine, and torch the enums it registers: nothing a user can act on
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def perf_rows(tracking_uri: str, run_id: str) -> list[tuple[str, str]]:
    """The run's `perf/*` metrics as rows: `perf/time_to_first_step_s` -> time to first step.

    No rows while the tracking server is away (the run's writes wait in its outbox).
    """
    from mlflow import MlflowClient

    from tunelab.tracking.outbox import unreachable

    try:
        metrics = MlflowClient(tracking_uri).get_run(run_id).data.metrics
    except Exception as err:
        if not unreachable(err):
            raise
        return []
    rows = []
    for key, value in sorted(metrics.items()):
        if key.startswith("perf/"):
            name = key.removeprefix("perf/")
            text = f"{value:.1f} s" if name.endswith("_s") else f"{value:.4g}"
            rows.append((name.removesuffix("_s").replace("_", " "), text))
    return rows


def print_summary(run: RunConfig, result) -> None:
    """A short table: test metrics, parameters, wall time, where the run is in MLflow."""
    from rich.console import Console
    from rich.table import Table

    from tunelab.tracking.run_info import run_link
    from tunelab.tracking.store import absolute_uri, ui_command

    table = Table(title=f"tunelab · {run.name}", show_header=False)
    for key, value in sorted(result.metrics.items()):
        table.add_row(key, f"{value:.4f}")
    trainable, total = result.trainable_params, result.total_params
    table.add_row(
        "trainable / total params",
        f"{trainable:,} / {total:,} ({100 * trainable / max(total, 1):.2f}%)",
    )
    table.add_row("wall time", f"{result.wall_time_s:.0f} s")
    uri = absolute_uri(run.logger.tracking_uri)
    for label, value in perf_rows(uri, result.run_id):
        table.add_row(label, value)
    table.add_row("run folder", str(result.run_dir))
    table.add_row("MLflow run id", result.run_id)
    table.add_row("MLflow UI", ui_command(uri))
    if run.logger.log_model and run.export.save_model:
        table.add_row("MLflow Model", f"runs:/{result.run_id}/model  (serve it, predict.py)")
    console = Console()
    console.print(table)
    # on its own line, never cut by the table: the run in MLflow's model-training view
    console.print(run_link(result.experiment_id, result.run_id), soft_wrap=True)


def run_and_report(run: RunConfig) -> None:
    """Run the experiment and print the summary."""
    quiet_libraries()
    from tunelab.base.ranks import is_rank_zero
    from tunelab.run.pipeline import run_experiment

    result = run_experiment(run)
    if is_rank_zero():  # one summary, whatever the number of processes
        print_summary(run, result)
