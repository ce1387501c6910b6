"""Compose `run.py` arguments into one config and validate it before anything heavy is imported.

Hydra composes the config groups in `configs/`, the recipes in `experiments/` (group
`experiment`) and the search spaces in `sweeps/` (group `sweep`). Value overrides such as
`method.r=16` are applied here rather than by Hydra so that every problem (unknown keys, unknown
names, wrong types, out-of-range values) is collected and reported in one `ConfigError`.
"""

from __future__ import annotations

import difflib
import importlib.util
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tunelab.base.data_root import data_root
from tunelab.base.errors import ConfigError

REPO_ROOT = Path(__file__).resolve().parents[2]
CONFIG_DIR = REPO_ROOT / "configs"
GROUP_DIRS = {
    "experiment": REPO_ROOT / "experiments",
    "sweep": REPO_ROOT / "sweeps",
    "task": CONFIG_DIR / "task",
    "method": CONFIG_DIR / "method",
    "data": CONFIG_DIR / "data",
    "model": CONFIG_DIR / "model",
    "optim": CONFIG_DIR / "optim",
    "trainer": CONFIG_DIR / "trainer",
    "logger": CONFIG_DIR / "logger",
    "export": CONFIG_DIR / "export",
}


def available(group: str) -> list[str]:
    """Names selectable in a config group (its YAML file stems), sorted."""
    return sorted(p.stem for p in GROUP_DIRS[group].glob("*.yaml"))


def nearest(word: str, candidates: list[str]) -> str:
    """A ` (did you mean X?)` hint for the closest candidate, or an empty string."""
    match = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def _package_dir(package: str, sub: str = "") -> str:
    """Resolver `${package_dir:pkg,sub}`: a folder inside an installed package, found lazily."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            f"package '{package}' is not installed: pip install {package.replace('_', '-')}"
        )
    return str(Path(next(iter(spec.submodule_search_locations))) / sub)


def register_resolvers() -> None:
    """Register tunelab's OmegaConf resolvers (idempotent)."""
    if not OmegaConf.has_resolver("package_dir"):
        OmegaConf.register_new_resolver("package_dir", _package_dir)
    if not OmegaConf.has_resolver("data_root"):
        OmegaConf.register_new_resolver("data_root", data_root)


_REGISTERED: dict[Path, int] = {}  # file -> mtime when it went into Hydra's ConfigStore


def _register_flat_groups() -> None:
    """Expose `experiments/*.yaml` and `sweeps/*.yaml` to Hydra as groups `experiment`, `sweep`.

    Each file is parsed once per process (again when it changes): a run composes twice (its
    config, then its recipe for the run name) and a sweep once per trial.
    """
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, package in (("experiment", "_global_"), ("sweep", "sweep")):
        for path in sorted(GROUP_DIRS[group].glob("*.yaml")):
            stamp = path.stat().st_mtime_ns
            if _REGISTERED.get(path) != stamp:
                store.store(group=group, name=path.stem, node=OmegaConf.load(path), package=package)
                _REGISTERED[path] = stamp


def _split_overrides(args: list[str], problems: list[str]) -> tuple[list[str], list[Any]]:
    """Split CLI overrides into group selections (for Hydra) and value overrides (applied here)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    selections, values = [], []
    for arg in args:
        try:
            override = parser.parse_override(arg)
        except Exception as err:  # hydra raises OverrideParseException with a useful message
            problems.append(f"cannot parse override '{arg}': {err}")
            continue
        key = override.key_or_group
        if key in GROUP_DIRS and override.package is None:
            choice = override.value()
            if choice is not None and str(choice) not in available(key):
                names = available(key)
                problems.append(
                    f"{key}={choice}: unknown {key}{nearest(str(choice), names)}; "
                    f"available: {', '.join(names)}"
                )
                continue
            selections.append(arg)
        elif override.is_add() or override.is_delete() or override.is_force_add():
            selections.append(arg)
        else:
            values.append(override)
    return selections, values


def leaf_paths(node: Any, prefix: str = "") -> list[str]:
    """All dotted key paths in a config (for 'did you mean' hints); nothing is resolved."""
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=False)
    if not isinstance(node, dict):
        return [prefix] if prefix else []
    paths = [prefix] if prefix else []
    for key, value in node.items():
        paths += leaf_paths(value, f"{prefix}.{key}" if prefix else str(key))
    return paths


def _apply_values(cfg: DictConfig, overrides: list[Any], problems: list[str]) -> None:
    """Apply `key=value` overrides, reporting keys that do not exist instead of adding them."""
    known = leaf_paths(cfg)
    for override in overrides:
        key = override.key_or_group
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        # keys(), not `in`: OmegaConf's `in` is False for a present key whose value is ??? (missing)
        if not isinstance(node, DictConfig) or leaf not in node.keys():  # noqa: SIM118
            problems.append(f"{key}: unknown key{nearest(key, known)}")
            continue
        OmegaConf.update(cfg, key, override.value(), merge=False, force_add=True)


def fill_defaults(cfg: DictConfig) -> None:
    """Put each group's config-class defaults under it (values from YAML win).

    Defaults live in the config classes only; filling them in makes every field visible in
    `--cfg` and MLflow, overridable with `key=value`, and searchable by sweeps.
    """
    from tunelab.config.plugins import group_defaults

    for group in ("task", "method", "data", "model", "optim", "trainer", "logger", "export"):
        node = cfg.get(group)
        if isinstance(node, DictConfig):
            head = {key: node[key] for key in ("_target_", "name") if key in node}
            cfg[group] = OmegaConf.merge(head, group_defaults(group, node), node)


def _recipe_data(recipe: str) -> str | None:
    """The `data` option a recipe selects (its `override /data: X`), else the root default's."""
    for source in (GROUP_DIRS["experiment"] / f"{recipe}.yaml", CONFIG_DIR / "config.yaml"):
        if not source.exists():
            continue
        for entry in OmegaConf.to_container(OmegaConf.load(source)).get("defaults") or []:
            if isinstance(entry, dict) and {"override /data", "data"} & entry.keys():
                return str(entry.get("override /data", entry.get("data")))
    return None


def file_runs_under_their_data(cfg: DictConfig, args: list[str]) -> None:
    """Name and file a run on data other than its recipe's after that data.

    `experiment=quickstart data=text_classification data.path=tickets.csv` is filed in the
    MLflow experiment `tickets`, apart from the recipe's own BANKING77 runs (in `tunelab`), and
    its folders (and resume key) are `<output_root>/quickstart_tickets/`. A
    `logger.experiment_name=` or `name=` on the command line wins.
    """
    given = {arg.split("=", 1)[0].lstrip("+~") for arg in args if "=" in arg}
    chosen = dict(arg.split("=", 1) for arg in args if arg.startswith(("experiment=", "data=")))
    recipe, logger = chosen.get("experiment"), cfg.get("logger")
    if recipe is None or "logger.experiment_name" in given or not isinstance(logger, DictConfig):
        return
    own = _recipe_data(recipe)
    if chosen.get("data", own) == own and "data.path" not in given:
        return
    path = OmegaConf.select(cfg, "data.path", default=None, throw_on_missing=False)
    label = Path(str(path)).stem if path else str(OmegaConf.select(cfg, "data.name"))
    logger.experiment_name = re.sub(r"[^\w.\-]+", "_", label).strip("_.-") or "data"
    if "name" not in given:  # its own folder and resume key: `quickstart_tickets`
        cfg.name = f"{cfg.name}_{logger.experiment_name}"


def compose(args: list[str], problems: list[str] | None = None) -> DictConfig:
    """Compose the run config from CLI-style overrides such as `method.r=16`.

    Args:
        args: overrides as given on the command line.
        problems: when given, problems are appended here (for one combined report with the
            schema check) instead of raised.

    Raises:
        ConfigError: listing every problem, when `problems` is None or composition fails.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_resolvers()
    collect = problems is not None
    problems = problems if collect else []
    selections, values = _split_overrides(args, problems)
    _register_flat_groups()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            cfg = hydra_compose("config", overrides=selections)
    except Exception as err:  # composition errors carry Hydra's own explanation
        raise ConfigError([*problems, f"composition failed: {err}"]) from None
    OmegaConf.set_struct(cfg, False)
    fill_defaults(cfg)
    _apply_values(cfg, values, problems)
    if not problems:
        file_runs_under_their_data(cfg, args)
    if problems and not collect:
        raise ConfigError(problems)
    return cfg
