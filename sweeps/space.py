"""Search spaces: the `sweep` config group's schema, its checks, and sampling one trial's config.

A search space maps config paths to distributions:

    params:
      method.r: {type: int, low: 4, high: 32, step: 4}
      optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
      model.quantize: {type: categorical, choices: [null, nf4]}
      method: {type: categorical, choices: [lora, ia3]}   # a config group: swap its option

A key naming a config group (`method`, `data`, `model`, ...) picks one of the group's options for
each trial; each trial is composed by Hydra from the sweep's own command line plus its choices,
as `run.py` would compose it. Paths that exist only under some options (e.g. `method.r` under
`lora`) are sampled only when the trial's config has them (define-by-run conditional space).
Everything is checked before the first trial: unknown paths (with a nearest-key hint), malformed
distributions, and every probe value (low, high, each choice) against the full run schema.
"""

from __future__ import annotations

import copy
from typing import Annotated, Any, Literal

from omegaconf import DictConfig, OmegaConf
from pydantic import Field, TypeAdapter, ValidationError, model_validator

from tunelab.base.errors import ConfigError
from tunelab.base.schema import PositiveInt, RunConfig, Strict
from tunelab.config.compose import available, compose, leaf_paths, nearest
from tunelab.config.validate import check, load_config, validate

SWAPPABLE_GROUPS = ("method", "data", "model", "optim", "trainer", "logger", "export")


class IntDistribution(Strict):
    """Integers in [low, high] on a `step` grid (optionally log-spaced)."""

    type: Literal["int"]  # `int`
    low: int  # the smallest value
    high: int  # the largest value
    step: PositiveInt = 1  # the grid's spacing
    log: bool = False  # sample on a log scale (needs low >= 1 and step 1)

    @model_validator(mode="after")
    def _bounds(self) -> IntDistribution:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and (self.low < 1 or self.step != 1):
            raise ValueError("log: true needs low >= 1 and step 1")
        return self


class FloatDistribution(Strict):
    """Floats in [low, high]; `log: true` samples the exponent uniformly."""

    type: Literal["float"]  # `float`
    low: float  # the smallest value
    high: float  # the largest value
    step: Annotated[float, Field(gt=0)] | None = None  # a grid's spacing (null: continuous)
    log: bool = False  # sample the exponent uniformly (needs low > 0 and no step)

    @model_validator(mode="after")
    def _bounds(self) -> FloatDistribution:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        if self.log and (self.low <= 0 or self.step is not None):
            raise ValueError("log: true needs low > 0 and no step")
        return self


class CategoricalDistribution(Strict):
    """One of a list of values (or, for a config group key, of the group's options)."""

    type: Literal["categorical"]  # `categorical`
    # the values (for a group such as `method`: its options' names)
    choices: list[bool | int | float | str | None] = Field(min_length=1)


Distribution = Annotated[
    IntDistribution | FloatDistribution | CategoricalDistribution, Field(discriminator="type")
]


class SweepConfig(Strict):
    """The `sweep` group: what to search, how to sample and prune, where the study lives."""

    # the study's total of finished trials (over all workers; resuming counts)
    n_trials: PositiveInt = 20
    # stop starting trials after this many seconds
    timeout: Annotated[float, Field(gt=0)] | None = None
    # the Optuna study (default: the run's name); rerunning resumes it
    study_name: str | None = None
    # Optuna's storage (`sqlite:///optuna.db`, `postgresql://...`)
    storage: str = "sqlite:///optuna.db"
    heartbeat_interval: PositiveInt = 60  # s between a running trial's heartbeats
    grace_period: PositiveInt = 180  # s without one before another worker fails and reruns it
    sampler: Literal["tpe", "random"] = "tpe"  # `tpe` (seeded) or `random`
    n_startup_trials: Annotated[int, Field(ge=0)] = 5  # random trials before TPE models the space
    seed: Annotated[int, Field(ge=0)] | None = 42  # the sampler's seed (null: unseeded)
    # stops unpromising trials at a validation
    pruner: Literal["median", "successive_halving", "hyperband", "none"] = "median"
    # median pruner: trials completed before it prunes
    pruner_startup_trials: Annotated[int, Field(ge=0)] = 2
    # median pruner: reports (validations) before it judges a trial
    n_warmup_steps: Annotated[int, Field(ge=0)] = 0
    min_resource: PositiveInt = 1  # successive halving and Hyperband: the first rung (validations)
    # successive halving and Hyperband: the share (1/n) promoted per rung
    reduction_factor: Annotated[int, Field(ge=2)] = 3
    # the validation metric optimised (never a test metric)
    metric: str = Field(default="val/acc", pattern=r"^val/")
    # whether `metric` is maximised or minimised
    direction: Literal["maximize", "minimize"] = "maximize"
    # trials to run first, as `{path: value}` dicts
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    best_experiment_dir: str | None = None  # None: <output_root>/<name>/<study>/<study>_best.yaml
    # the search space: config path -> distribution
    params: dict[str, Distribution] = Field(min_length=1)


def has_path(cfg: DictConfig, path: str) -> bool:
    """Whether the dotted `path` names an existing key of `cfg`."""
    parent, _, leaf = path.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return isinstance(node, DictConfig) and leaf in node.keys()  # noqa: SIM118


def base_args(args: list[str]) -> list[str]:
    """The command line without its `sweep` selection and `sweep.*` overrides: one trial's run."""
    return [a for a in args if not a.lstrip("+~").startswith(("sweep=", "sweep."))]


def set_values(cfg: DictConfig, values: dict[str, Any]) -> DictConfig:
    """A copy of `cfg` with dotted-path values set (what `run.py key=value` does)."""
    out = copy.deepcopy(cfg)
    for path, value in values.items():
        OmegaConf.update(out, path, value, merge=False, force_add=True)
    return out


def trial_config(args: list[str], values: dict[str, Any]) -> DictConfig:
    """One trial's config, composed by Hydra exactly as `run.py` would compose it.

    Group choices (e.g. `method: ia3`) become selections on the command line; other values are
    set on the composed config like `key=value` overrides.
    """
    groups = [f"{p}={v}" for p, v in values.items() if p in SWAPPABLE_GROUPS]
    cfg = compose([*base_args(args), *groups])
    cfg.sweep = None  # a trial is one run
    return set_values(cfg, {p: v for p, v in values.items() if p not in SWAPPABLE_GROUPS})


def suggest(trial: Any, space: SweepConfig, args: list[str]) -> dict[str, Any]:
    """Sample one trial's values: group options first, then paths present in that config."""
    groups = {p: d for p, d in space.params.items() if p in SWAPPABLE_GROUPS}
    values = {p: trial.suggest_categorical(p, d.choices) for p, d in groups.items()}
    base = trial_config(args, values)
    for path, dist in space.params.items():
        if path in groups or not has_path(base, path):
            continue
        if isinstance(dist, CategoricalDistribution):
            values[path] = trial.suggest_categorical(path, dist.choices)
        elif isinstance(dist, IntDistribution):
            values[path] = trial.suggest_int(
                path, dist.low, dist.high, step=dist.step, log=dist.log
            )
        else:
            values[path] = trial.suggest_float(
                path, dist.low, dist.high, step=dist.step, log=dist.log
            )
    return values


def _probes(dist: Any) -> list[Any]:
    if isinstance(dist, CategoricalDistribution):
        return list(dist.choices)
    return [dist.low, dist.high]


def _variants(args: list[str], space: SweepConfig, problems: list[str]) -> list[DictConfig]:
    """The base config plus one config per option of each swapped group."""
    variants = [trial_config(args, {})]
    for path, dist in space.params.items():
        if path not in SWAPPABLE_GROUPS:
            continue
        if not isinstance(dist, CategoricalDistribution):
            problems.append(f"sweep.params.{path}: a config group takes type: categorical")
            continue
        for option in dist.choices:
            if str(option) not in available(path):
                names = available(path)
                problems.append(
                    f"sweep.params.{path}: unknown {path} '{option}'"
                    f"{nearest(str(option), names)}; available: {', '.join(names)}"
                )
            else:
                variants.append(trial_config(args, {path: option}))
    return variants


def _check_values(variants: list[DictConfig], space: SweepConfig, problems: list[str]) -> None:
    """Each probe value of each path, set in each config that has the path, must validate."""
    known = sorted({p for v in variants for p in leaf_paths(v)})
    for path, dist in space.params.items():
        if path in SWAPPABLE_GROUPS:
            continue
        targets = [v for v in variants if has_path(v, path)]
        if not targets:
            problems.append(f"sweep.params.{path}: unknown config path{nearest(path, known)}")
        for value in _probes(dist) if targets else []:
            for variant in targets:
                try:
                    validate(set_values(variant, {path: value}))
                except ConfigError as err:
                    problems += [f"sweep.params.{path}={value!r}: {p}" for p in err.problems]
                    break


def _check_params(raw: Any, problems: list[str]) -> dict[str, Any]:
    """Validate each `sweep.params` entry on its own, so every malformed one is named."""
    adapter, good = TypeAdapter(Distribution), {}
    for path, entry in (raw or {}).items() if isinstance(raw, dict) else ():
        try:
            good[path] = adapter.validate_python(entry)
        except ValidationError as err:
            for error in err.errors():
                loc = ".".join(str(part) for part in error["loc"][1:])  # [0] is the type tag
                got = "" if isinstance(error.get("input"), dict) else f" (got {error['input']!r})"
                problems.append(
                    f"sweep.params.{path}{'.' if loc else ''}{loc}: {error['msg']}{got}"
                )
    return good


def check_sweep(args: list[str], cfg: DictConfig, raw: dict[str, Any]) -> SweepConfig:
    """Validate the `sweep` group against its schema and the configs its trials will have.

    Args:
        args: the command line (each trial is composed from it).
        cfg: the composed run config, already valid.
        raw: the resolved `sweep` node.

    Raises:
        ConfigError: listing every problem, each naming its `sweep.` entry.
    """
    problems: list[str] = []
    params = _check_params(raw.get("params"), problems)
    space = check(SweepConfig, {**raw, "params": params or raw.get("params")}, "sweep", problems)
    if space is None:
        raise ConfigError(problems)
    _check_values(_variants(args, space, problems), space, problems)
    interval = cfg.trainer.val_check_interval  # an int counts batches, as in Lightning
    if space.pruner != "none" and (isinstance(interval, int) or interval > 1.0):
        problems.append(
            "trainer.val_check_interval: pruning reports at each validation and counts them per "
            "epoch; give a fraction of an epoch (a float <= 1.0, e.g. 0.5 for two reports an "
            "epoch; an int counts batches)"
        )
    for n, entry in enumerate(space.enqueue):
        unknown = sorted(set(entry) - set(space.params))
        if unknown:
            problems.append(f"sweep.enqueue[{n}]: {unknown} not in sweep.params")
    if problems:
        raise ConfigError(problems)
    return space


def load_sweep_config(args: list[str]) -> tuple[DictConfig, RunConfig, SweepConfig]:
    """Compose and validate a sweep's command line: the base run, then its search space."""
    cfg, run = load_config(args)
    if run.sweep is None:
        raise ConfigError(["sweep: none selected; add sweep=<name> (see python run.py --help)"])
    return cfg, run, check_sweep(args, cfg, run.sweep)
