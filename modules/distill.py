"""Knowledge distillation (Hinton et al. 2015) into a shallower copy of the teacher.

The student is the teacher with `method.student_layers` of its blocks, initialised from evenly
spaced teacher blocks as DistilBERT did (6 of 12: blocks 0, 2, ..., 10); embeddings and head are
copied. The loss is `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE`, with both
distributions softened by the temperature `T`. Decoders get the same loss on response tokens
(logit distillation). The teacher stays frozen, in eval mode and outside the module tree, so it
is in neither the optimiser nor the checkpoint; only the student is exported.
"""

from __future__ import annotations

import copy
import glob
import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from typing_extensions import override

from modules import tasks
from modules.base import FineTuneModule
from modules.blocks import find_layers, replace_layers
from tunelab.config import ConfigError
from tunelab.errors import ModelLoadError


def resolve_teacher(teacher: str, tracking_uri: str | None) -> Path:
    """A local folder or `.ckpt` for `method.teacher` (a glob picks the newest match).

    `mlflow:<run_id>` downloads that run's `model` artifact.
    """
    if teacher.startswith("mlflow:"):
        from mlflow.artifacts import download_artifacts

        from tunelab.tracking import absolute_uri

        run_id = teacher.removeprefix("mlflow:")
        uri = absolute_uri(tracking_uri) if tracking_uri else None
        try:
            return Path(download_artifacts(run_id=run_id, artifact_path="model", tracking_uri=uri))
        except Exception as err:
            raise ModelLoadError(
                f"method.teacher={teacher}: cannot download artifact 'model' of run {run_id} "
                f"from {uri}: {str(err).splitlines()[0]}"
            ) from err
    matches = sorted(glob.glob(str(Path(teacher).expanduser())), key=os.path.getmtime)
    if not matches:
        raise ModelLoadError(
            f"method.teacher: nothing at '{teacher}'; train a teacher first (e.g. "
            "python run.py experiment=full_minilm_banking77) or set method.teacher"
        )
    return Path(matches[-1])  # a glob such as outputs/full_x/*/export: the newest run


def load_teacher(path: Path, model_cfg: dict[str, Any], labels: list[str] | None) -> nn.Module:
    """A plain HF model from an export folder (full/freeze) or a tunelab Lightning checkpoint.

    Raises:
        ModelLoadError: for an adapter-only export or a non-mergeable PEFT checkpoint.
        ConfigError: when the teacher's classes differ from the data's.
    """
    if path.suffix == ".ckpt":
        from hydra.utils import get_class

        hparams = torch.load(path, map_location="cpu", weights_only=False)["hyper_parameters"]
        module = get_class(hparams["method"]["_target_"]).load_from_checkpoint(path)
        model = module.model
        if hasattr(model, "merge_and_unload"):
            try:
                model = model.merge_and_unload()
            except (AttributeError, ValueError) as err:
                raise ModelLoadError(f"method.teacher: cannot merge {path}: {err}") from err
    elif (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        model = tasks.load_pretrained({**model_cfg, "name_or_path": str(path)}, labels)
    else:
        raise ModelLoadError(
            f"method.teacher: {path} is not a full model export; give the export folder of a "
            "full/freeze run, a run's .ckpt, or mlflow:<run_id> of such a run"
        )
    names = [model.config.id2label[i] for i in range(len(labels or []))] if labels else None
    if labels and names != list(labels):
        raise ConfigError([f"method.teacher: its classes {names[:3]}... differ from the data's"])
    return model


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, task: str, method: dict
) -> torch.Tensor:
    """`alpha * T^2 * KL(teacher_T || student_T)`, per example (classifier) or response token."""
    if task == "causal_lm":  # logits at t predict token t+1; keep response tokens only
        keep = labels[:, 1:] != -100
        student, teacher = student[:, :-1][keep], teacher[:, :-1][keep]
    temperature = method["temperature"]
    soft = F.kl_div(
        F.log_softmax(student.float() / temperature, dim=-1),
        F.log_softmax(teacher.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return method["alpha"] * temperature**2 * soft


class DistillFineTune(FineTuneModule):
    """Train a `method.student_layers`-block student on the data and the teacher's logits."""

    @override
    def load_base(self) -> nn.Module:
        method = self.hparams.method
        path = resolve_teacher(method["teacher"], method.get("tracking_uri"))
        return load_teacher(path, self.hparams.model, self.hparams.labels)

    @override
    def adapt(self, model: nn.Module) -> nn.Module:
        teacher = model.eval().requires_grad_(False)
        # Not a submodule: kept out of state_dict, the optimiser and `.train()`.
        object.__setattr__(self, "teacher", teacher)
        depth = len(find_layers(teacher)[1])
        keep = self.hparams.method["student_layers"]
        if keep >= depth:
            raise ConfigError(
                [f"method.student_layers: {keep} but the teacher has {depth}; use fewer"]
            )
        student = copy.deepcopy(teacher).requires_grad_(True)
        replace_layers(student, [i * depth // keep for i in range(keep)])
        return student

    @override
    def on_fit_start(self) -> None:
        self.teacher.to(self.device)

    @override
    def compute_loss(self, outputs: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(**batch).logits
        method = self.hparams.method
        soft = distillation_loss(outputs.logits, teacher_logits, batch["labels"], self.task, method)
        return soft + (1 - method["alpha"]) * outputs.loss
