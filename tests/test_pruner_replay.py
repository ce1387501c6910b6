"""Pruner replay (benchmarks/replay_pruners.py) against real Optuna studies with recorded curves."""

from __future__ import annotations

import optuna
import pytest
from pydantic import ValidationError

from benchmarks.replay_pruners import parse_setting, replay, summarise
from sweeps.optuna_sweep import make_pruner

# Nine trials, four reports each: three learn, six stay hopeless (flat, low).
CURVES = [
    [0.10, 0.30, 0.50, 0.60],
    [0.02, 0.03, 0.03, 0.04],
    [0.12, 0.35, 0.55, 0.70],
    [0.01, 0.02, 0.02, 0.02],
    [0.03, 0.03, 0.04, 0.04],
    [0.09, 0.28, 0.52, 0.65],
    [0.02, 0.02, 0.03, 0.03],
    [0.01, 0.01, 0.02, 0.02],
    [0.02, 0.04, 0.04, 0.05],
]


def run_study(pruner: optuna.pruners.BasePruner, name: str) -> optuna.Study:
    """A real sequential study whose trial n reports CURVES[n] and prunes when told to."""

    def objective(trial: optuna.Trial) -> float:
        curve = CURVES[trial.number]
        for step, value in enumerate(curve, start=1):
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return curve[-1]

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, direction="maximize", pruner=pruner)
    study.optimize(objective, n_trials=len(CURVES))
    return study


def test_replay_without_pruning_keeps_every_trial_and_every_step():
    source = run_study(optuna.pruners.NopPruner(), "plain")
    summary = summarise(source, replay(source, optuna.pruners.NopPruner(), "replay"))
    assert summary["share"] == 1.0 and summary["complete"] == len(CURVES)
    assert summary["best_val"] == 0.70


@pytest.mark.parametrize(
    "setting",
    [
        "successive_halving:min_resource=1,reduction_factor=3",
        "median:pruner_startup_trials=1,n_warmup_steps=1",
    ],
)
def test_replay_makes_the_decisions_of_a_real_pruned_study(setting: str):
    source = run_study(optuna.pruners.NopPruner(), "plain")
    real = run_study(make_pruner(parse_setting(setting), 4), "pruned")
    rows = replay(source, make_pruner(parse_setting(setting), 4), "pruned")
    real_states = [t.state.name for t in real.trials]
    assert [("COMPLETE" if r["value"] is not None else "PRUNED") for r in rows] == real_states
    assert [r["reports"] for r in rows] == [len(t.intermediate_values) for t in real.trials]
    summary = summarise(source, rows)
    assert "PRUNED" in real_states and summary["share"] < 1.0
    assert summary["best_val"] == 0.70  # the hopeless curves go, the best one stays


def test_replay_refuses_a_pruned_source_study():
    source = run_study(make_pruner(parse_setting("successive_halving:min_resource=1"), 4), "s")
    with pytest.raises(ValueError, match=r"sweep\.pruner=none"):
        replay(source, optuna.pruners.NopPruner(), "replay")


def test_unknown_pruner_setting_names_the_key():
    with pytest.raises(ValidationError, match="pruner"):
        parse_setting("asha:min_resource=1")
