r"""Replay pruner settings over a finished unpruned sweep: what each would have kept and spent.

    python benchmarks/replay_pruners.py --storage sqlite:////tmp/sweep/optuna.db \
        --study bench_none --pruner median:pruner_startup_trials=1,n_warmup_steps=2 \
        --pruner successive_halving:min_resource=2,reduction_factor=3

An unpruned sweep records every trial's whole validation curve. Training here is deterministic
(seeded, CPU), so a pruned trial would have reported exactly the first k values of that curve:
feeding the curves, in trial order, to a pruner built by tunelab's own `make_pruner` gives the
decisions a real sequential sweep with that pruner makes, without training again (checked against
real pruned sweeps in the README). Steps are counted as `k / reports * steps of a full trial`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import optuna

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the repo is run from its root, not installed

from benchmarks.sweep_pruning import goal_verdict  # noqa: E402
from sweeps.optuna_sweep import make_pruner  # noqa: E402
from sweeps.space import SweepConfig  # noqa: E402


def parse_setting(text: str) -> SweepConfig:
    """`kind:key=value,...` -> a validated `sweep` config holding that pruner setting."""
    kind, _, rest = text.partition(":")
    keys = dict(pair.split("=", 1) for pair in rest.split(",") if pair)
    placeholder = {"x": {"type": "float", "low": 0.0, "high": 1.0}}
    return SweepConfig.model_validate({"pruner": kind, **keys, "params": placeholder})


def replay(source: optuna.Study, pruner: optuna.pruners.BasePruner, name: str) -> list[dict]:
    """Feed each recorded curve to `pruner` in trial order; where would each trial have ended.

    Args:
        source: a finished sweep without pruning (every trial complete).
        pruner: the pruner to replay.
        name: the replay study's name (Hyperband picks brackets by study name and trial number).

    Returns:
        One row per trial: its number, the reports it would have made, its final value or None.
    """
    study = optuna.create_study(study_name=name, direction=source.direction, pruner=pruner)
    rows = []
    for recorded in source.trials:
        if recorded.state != optuna.trial.TrialState.COMPLETE:
            raise ValueError(
                f"trial {recorded.number} is {recorded.state.name}: replay needs an "
                "unpruned, finished sweep (sweep.pruner=none)"
            )
        trial, curve = study.ask(), recorded.intermediate_values
        reports, value = 0, recorded.value
        for step in sorted(curve):
            trial.report(curve[step], step)
            reports = step
            if trial.should_prune():
                value = None
                break
        state = optuna.trial.TrialState.PRUNED if value is None else None
        study.tell(trial, value, state=state)
        rows.append({"number": recorded.number, "reports": reports, "value": value})
    return rows


def full_reports(source: optuna.Study) -> int:
    """Reports (validations) of a full trial: the longest recorded curve."""
    return max(len(t.intermediate_values) for t in source.trials)


def recorded_test_acc(trial: optuna.trial.FrozenTrial) -> float | None:
    """The test accuracy the sweep recorded for a finished trial, if any."""
    return trial.user_attrs.get("test_metrics", {}).get("test/acc")


def summarise(source: optuna.Study, rows: list[dict]) -> dict:
    """Best kept value, its recorded test acc, share of the unpruned steps and trial states."""
    kept = [r for r in rows if r["value"] is not None]
    best = (
        max(kept, key=lambda r: r["value"])
        if source.direction.name == "MAXIMIZE"
        else min(kept, key=lambda r: r["value"])
    )
    best_trial = source.trials[best["number"]]
    return {
        "best_val": best["value"],
        "best_test": recorded_test_acc(best_trial),
        "best_params": best_trial.params,
        "share": sum(r["reports"] for r in rows) / (full_reports(source) * len(rows)),
        "complete": len(kept),
        "pruned": len(rows) - len(kept),
    }


def percent(value: float | None) -> str:
    """0.7338 -> '73.38'; a missing value -> 'n/a'."""
    return "n/a" if value is None else f"{100 * value:.2f}"


def to_markdown(source: optuna.Study, results: dict[str, dict], command: str) -> str:
    """One row per pruner setting, the unpruned sweep first."""
    plain, plain_test = source.best_value, recorded_test_acc(source.best_trial)
    lines = [
        f"Replay of `{source.study_name}` ({len(source.trials)} trials). Command: `{command}`",
        "",
        "| pruner setting | best val acc | gap to unpruned | its test acc | share of steps "
        "| complete / pruned | goal |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| none | {100 * plain:.2f} | 0.00 | {percent(plain_test)} | 100% "
        f"| {len(source.trials)} / 0 | |",
    ]
    for name, res in results.items():
        gap = 100 * (plain - res["best_val"])
        goal = goal_verdict(gap, res["share"])
        lines.append(
            f"| `{name}` | {100 * res['best_val']:.2f} | {gap:+.2f} | "
            f"{percent(res['best_test'])} | "
            f"{100 * res['share']:.0f}% | {res['complete']} / {res['pruned']} | {goal} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="Optuna storage URL of the sweep")
    parser.add_argument("--study", default="bench_none", help="the unpruned study's name")
    parser.add_argument("--pruner", action="append", required=True, help="kind:key=value,...")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    parser.add_argument("--json", action="store_true", help="print the summaries as JSON too")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    source = optuna.load_study(study_name=args.study, storage=args.storage)
    results = {}
    for setting in args.pruner:
        pruner = make_pruner(parse_setting(setting), full_reports(source))
        rows = replay(source, pruner, name=f"{args.study}_replay_{setting}")
        results[setting] = summarise(source, rows)
    command = "python benchmarks/replay_pruners.py " + " ".join(sys.argv[1:])
    text = to_markdown(source, results, command)
    if args.out:
        args.out.write_text(text)
    print(text)
    if args.json:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
