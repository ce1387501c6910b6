"""tunelab: fine-tune a language model on your domain data, tracked in MLflow.

    python run.py experiment=NAME [group=option ...] [key=value ...]
    python run.py --help            # usage plus available experiments, methods, datasets, ...
    python run.py experiment=NAME --cfg   # print the composed config and exit

Config, validation and `--help` import nothing heavy; torch, Lightning and the rest are imported
only once the whole config has been checked.
"""

from __future__ import annotations

import os
import sys

from tunelab.config.compose import GROUP_DIRS, available

USAGE = """usage: python run.py experiment=NAME [group=option ...] [key=value ...] [--cfg]

Examples:
  python run.py experiment=quickstart
  python run.py experiment=lora_minilm_banking77 method.r=16 optim.lr=3e-4 \\
      trainer.max_epochs=2 seed=1
  python run.py experiment=lora_minilm_banking77 sweep=lora_rank_lr sweep.n_trials=20

Environment: TUNELAB_DATA_DIR (data root holding banking77/, clinc150/, ...; default: data/
             in this repository, else ../shared/data beside it),
             MLFLOW_TRACKING_URI (default: sqlite:///mlflow.db in this folder)."""


def _first_comment(path: os.PathLike) -> str:
    """The description of a YAML file: its leading comment block, less the run command line.

    A description may go on over several comment lines; all of them are kept (never cut).
    """
    lines = []
    with open(path) as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            text = line.lstrip("# ").strip()
            if text and not text.startswith("python run.py"):
                lines.append(text)
    return " ".join(lines)


def describe(width: int = 100) -> str:
    """Usage plus every selectable option of every config group, each with its description.

    Descriptions are wrapped at `width` columns, never cut.
    """
    import textwrap

    lines = [USAGE]
    for group, folder in GROUP_DIRS.items():
        lines.append(f"\n{group}= ")
        for name in available(group):
            text = _first_comment(folder / f"{name}.yaml")
            wrapped = textwrap.wrap(text, width - 31) or [""]
            lines.append(f"  {name:<28} {wrapped[0]}")
            lines += [" " * 31 + more for more in wrapped[1:]]
    return "\n".join(lines)


def interrupted_line(stop, args: list[str]) -> str:
    """One line: which signal stopped the run, what was saved, and the command that resumes it."""
    import shlex
    import signal

    name = signal.Signals(stop.signum).name
    saved = "checkpoint saved" if stop.saved else "resumes from its last checkpoint"
    where = f" in {stop.run_dir}" if stop.run_dir else ""
    command = " ".join(["python run.py", *(shlex.quote(a) for a in args)])
    return f"stopped by {name}; {saved}{where}; resume with: {command}"


def execute(args: list[str], print_only: bool) -> None:
    """Compose and validate `args`, then print the config, run the sweep or run the experiment."""
    from tunelab.config.validate import load_config

    if any(a.lstrip("+").startswith("sweep=") for a in args):
        from sweeps.space import load_sweep_config

        cfg, run, space = load_sweep_config(args)
    else:
        cfg, run = load_config(args)
    if print_only:
        from omegaconf import OmegaConf

        print(OmegaConf.to_yaml(cfg, resolve=True))
    elif run.sweep is not None:
        from sweeps.optuna_sweep import run_sweep

        run_sweep(args, cfg, run, space)
    else:
        from tunelab.tracking.report import run_and_report

        run_and_report(run)


def main(argv: list[str]) -> int:
    """Run one experiment or sweep from command-line overrides; return the exit code."""
    if any(arg in ("-h", "--help", "help", "list") for arg in argv):
        print(describe())
        return 0
    if not argv:  # no recipe: say how to pick one rather than train a default
        print(f"{USAGE}\n\nerror: no experiment given; list them with --help", file=sys.stderr)
        return 2
    from tunelab.base.errors import TunelabError, report_error
    from tunelab.base.signals import Interrupted

    args = [arg for arg in argv if arg != "--cfg"]
    try:
        execute(args, print_only="--cfg" in argv)
    except TunelabError as err:
        return report_error(err)
    except Interrupted as stop:
        print(f"\n{interrupted_line(stop, args)}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:  # Ctrl-C before training started: nothing to resume
        print("\ninterrupted (SIGINT) before training started; nothing was saved", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
