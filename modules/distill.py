"""Knowledge distillation (Hinton et al. 2015) into a shallower copy of the teacher.

The student is the teacher with `method.student_layers` of its blocks, initialised from evenly
spaced teacher blocks as DistilBERT did (6 of 12: blocks 0, 2, ..., 10); embeddings and head are
copied. The loss is `alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE`, with both
distributions softened by the temperature `T`. Decoders get the same loss on response tokens
(logit distillation). The teacher stays frozen, in eval mode and outside the module tree, so it
is in neither the optimiser nor the checkpoint; only the student is exported.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, field_validator

from tunelab.base.errors import ConfigError, ModelLoadError
from tunelab.base.plugin import MethodConfig, ModelProbe, TaskConfig
from tunelab.base.schema import ModelConfig, PositiveInt, Probability


def resolve_teacher(teacher: str, tracking_uri: str | None) -> Path:
    """A local folder or `.ckpt` for `method.teacher` (a glob picks the newest match).

    `mlflow:<run_id>` downloads that run's MLflow Model `model` (its export folder).
    """
    if teacher.startswith("mlflow:"):
        from mlflow.artifacts import download_artifacts

        from tunelab.base.services import absolute_uri, mlflow_artifact_uri

        run_id = teacher.removeprefix("mlflow:")
        uri = absolute_uri(tracking_uri) if tracking_uri else None
        try:
            source = mlflow_artifact_uri(f"runs:/{run_id}/model", uri)  # in that store
            model = Path(download_artifacts(artifact_uri=source, tracking_uri=uri))
        except Exception as err:
            raise ModelLoadError(
                f"method.teacher={teacher}: cannot download artifact 'model' of run {run_id} "
                f"from {uri}: {str(err).splitlines()[0]}"
            ) from err
        export = model / "artifacts" / "export"  # the MLflow Model wraps the export folder
        return export if export.is_dir() else model
    matches = sorted(glob.glob(str(Path(teacher).expanduser())), key=os.path.getmtime)
    if not matches:
        raise ModelLoadError(
            f"method.teacher: nothing at '{teacher}'; train a teacher first (e.g. "
            "python run.py experiment=full_minilm_banking77) or set method.teacher"
        )
    return Path(matches[-1])  # a glob such as outputs/full_x/*/export: the newest run


def load_teacher(
    path: Path, model_cfg: ModelConfig, task: TaskConfig, labels: list[str] | None
) -> Any:
    """A plain HF model from an export folder (full/freeze) or a tunelab Lightning checkpoint.

    Raises:
        ModelLoadError: for an adapter-only export or a non-mergeable PEFT checkpoint.
        ConfigError: when the teacher's classes differ from the data's.
    """
    if path.suffix == ".ckpt":
        from tunelab.base.services import load_checkpoint_module

        model = load_checkpoint_module(path).model
        if hasattr(model, "merge_and_unload"):
            try:
                model = model.merge_and_unload()
            except (AttributeError, ValueError) as err:
                raise ModelLoadError(f"method.teacher: cannot merge {path}: {err}") from err
    elif (path / "config.json").exists() and not (path / "adapter_config.json").exists():
        from tunelab.base.models import load_pretrained

        saved = json.loads((path / "config.json").read_text())
        same_pooling(saved.get("classifier_pooling") or "cls", task)
        teacher_cfg = model_cfg.model_copy(update={"name_or_path": str(path)})
        model = load_pretrained(teacher_cfg, task, labels)
    else:
        raise ModelLoadError(
            f"method.teacher: {path} is not a full model export; give the export folder of a "
            "full/freeze run, a run's .ckpt, or mlflow:<run_id> of such a run"
        )
    same_pooling(getattr(model.config, "classifier_pooling", None) or "cls", task)
    names = [model.config.id2label[i] for i in range(len(labels or []))] if labels else None
    if labels and names != list(labels):
        raise ConfigError([f"method.teacher: its classes {names[:3]}... differ from the data's"])
    return model


def same_pooling(trained: str, task: TaskConfig) -> None:
    """The student is cut from the teacher and keeps its head: `task.pooling` must match.

    Raises:
        ConfigError: when the teacher was trained with another `task.pooling`.
    """
    asked = getattr(task, "pooling", "cls")
    if trained != asked:
        raise ConfigError(
            [
                f"task.pooling={asked} but method.teacher was trained with task.pooling="
                f"{trained}; set task.pooling={trained} (the student keeps the teacher's head)"
            ]
        )


def distillation_loss(
    student: Any, teacher: Any, labels: Any, causal: bool, temperature: float
) -> Any:
    """`T^2 * KL(teacher_T || student_T)`, per example (classifier) or response token."""
    import torch.nn.functional as F

    if causal:  # logits at t predict token t+1; keep response tokens only
        keep = labels[:, 1:] != -100
        student, teacher = student[:, :-1][keep], teacher[:, :-1][keep]
    soft = F.kl_div(
        F.log_softmax(student.float() / temperature, dim=-1),
        F.log_softmax(teacher.float() / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    return temperature**2 * soft


class DistillMethod(MethodConfig):
    """Train a `student_layers`-block student on the data and a frozen teacher's logits.

    Attributes:
        teacher: export folder of a full/freeze run (a glob picks the newest), its `.ckpt`, or
            `mlflow:<run_id>` (that run's `model` artifact).
        tracking_uri: where `mlflow:<run_id>` teachers are looked up.
        student_layers: blocks kept, initialised from evenly spaced teacher blocks.
        temperature: softening of both distributions.
        alpha: weight of the distillation term; `1 - alpha` weights cross-entropy.
    """

    teacher: str = ""
    tracking_uri: str | None = None
    student_layers: PositiveInt = 3
    temperature: Annotated[float, Field(gt=0)] = 2.0
    alpha: Probability = 0.5
    _teacher: Any = PrivateAttr(None)

    @field_validator("teacher")
    @classmethod
    def _teacher_given(cls, teacher: str) -> str:
        if teacher in ("", "???"):
            raise ValueError(
                "method.teacher is required: an export folder, a .ckpt or mlflow:<run_id>"
            )
        return teacher

    def check(self, probe: ModelProbe, task: TaskConfig, problems: list[str]) -> None:
        """A local teacher must exist and be deeper than the student."""
        if self.teacher.startswith("mlflow:"):
            return
        matches = glob.glob(str(Path(self.teacher).expanduser()))
        if not matches:
            problems.append(
                f"method.teacher: nothing at '{self.teacher}'; train a teacher first (e.g. python "
                "run.py experiment=full_minilm_banking77) or point method.teacher at its export"
            )
            return
        config = Path(max(matches, key=os.path.getmtime)) / "config.json"
        depth = json.loads(config.read_text()).get("num_hidden_layers") if config.exists() else None
        if depth is not None and self.student_layers >= depth:
            problems.append(
                f"method.student_layers: {self.student_layers} but the teacher has {depth}; "
                f"use fewer than {depth}"
            )

    def load_base(self, model: ModelConfig, task: TaskConfig, labels: list[str] | None) -> Any:
        """The teacher: the model the student is cut from."""
        return load_teacher(resolve_teacher(self.teacher, self.tracking_uri), model, task, labels)

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Keep the teacher aside (frozen, outside the module tree); return the student."""
        import copy

        from modules.blocks import find_layers, replace_layers

        self._teacher = model.eval().requires_grad_(False)
        depth = len(find_layers(model)[1])
        if self.student_layers >= depth:
            raise ConfigError(
                [f"method.student_layers: {self.student_layers} but the teacher has {depth}"]
            )
        student = copy.deepcopy(model).requires_grad_(True)
        keep = self.student_layers
        replace_layers(student, [i * depth // keep for i in range(keep)])
        return student

    def loss(self, outputs: Any, batch: dict[str, Any], task: TaskConfig) -> Any:
        """Soft targets from the teacher plus `(1 - alpha)` cross-entropy."""
        import torch

        teacher = self._teacher.to(outputs.logits.device)
        with torch.no_grad():
            teacher_logits = teacher(**batch).logits
        causal = task.next_token
        soft = distillation_loss(
            outputs.logits, teacher_logits, batch["labels"], causal, self.temperature
        )
        return self.alpha * soft + (1 - self.alpha) * task.loss(outputs, batch)
