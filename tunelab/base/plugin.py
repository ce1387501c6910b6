"""The three plug-in bases: a task kind, a fine-tuning method and a dataset.

A plug-in is one config class (its only defaults, and its code as hooks) plus one YAML naming it
with `_target_`: `tasks/<name>.py` + `configs/task/<name>.yaml`, `modules/<name>.py` +
`configs/method/<name>.yaml`, `datamodules/<name>.py` + `configs/data/<name>.yaml`. The run finds
them through `_target_` only. Hooks import their heavy libraries inside, so validating a config
imports pydantic alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelab.base.schema import CallbackConfig, ModelConfig, Strict


class Plugin(Strict):
    """A config group whose `_target_` names its own config class.

    Attributes:
        _target_: the config class (a dotted path inside the group's package).
        name: the option's name, as logged and shown in run names.
    """

    target: str = Field(alias="_target_", pattern=r"^[A-Za-z_][\w.]*$")
    name: str = Field(pattern=r"^[\w.\-]+$")

    def dump(self) -> dict[str, Any]:
        """The config as plain data, `_target_` included (what checkpoints and MLflow keep)."""
        return self.model_dump(by_alias=True)


class Labels(BaseModel):
    """The class names of a classification dataset, in label-id order.

    Attributes:
        names: the classes.
        out_of_scope: the class meaning "none of the intents" (CLINC150's `oos`), reported apart.
    """

    names: list[str]
    out_of_scope: str | None = None

    @property
    def out_of_scope_index(self) -> int | None:
        """The out-of-scope class's id, or None."""
        return self.names.index(self.out_of_scope) if self.out_of_scope else None


class ModelProbe(BaseModel):
    """What early checks may ask about the base model, read without its weights.

    Built from the model's `config.json` and a skeleton on the meta device (see
    `tunelab.config.preflight`), so checks run in a second even for a 7B model.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    name_or_path: str
    model_type: str
    num_layers: int
    max_positions: int | None
    linear_names: list[str]
    hf_config: Any = None


class TaskConfig(Plugin):
    """Base of every task kind: what the model predicts, how it learns, is measured and served.

    Class attributes say what the task is; fields are settings a run may override; hooks are
    the task's code. The run, the LightningModule, serving and `predict.py` ask the task instead
    of comparing task names.

    Attributes:
        mode: whether a larger (`max`) or smaller (`min`) `monitor` value is better.
    """

    auto_model: ClassVar[str] = ""  # the transformers Auto class that loads the base model
    peft_task_type: ClassVar[str] = ""  # peft's TaskType (decides what an adapter export holds)
    data_family: ClassVar[str] = ""  # the `DataConfig.family` this task reads
    trains_head: ClassVar[bool] = False  # a new output head trains beside any adapter
    next_token: ClassVar[bool] = False  # logits at position t predict the label at t + 1
    input_columns: ClassVar[tuple[str, ...]] = ()  # what a row to predict must have
    optional_columns: ClassVar[tuple[str, ...]] = ()  # what it may have besides
    output_columns: ClassVar[tuple[str, ...]] = ()  # what a prediction holds

    monitor: str = "val/loss"  # the validation metric that picks the best checkpoint
    mode: Literal["min", "max"] = "min"
    callbacks: list[CallbackConfig] = []  # the task's callbacks (reports, previews)

    def check(self, run: dict[str, Any], problems: list[str]) -> None:
        """Append problems of the resolved config that only this task can see."""

    def check_model(self, probe: ModelProbe, problems: list[str]) -> None:
        """Append problems only visible with the model at hand (checked before loading it)."""

    def method_problem(self, method: type[MethodConfig]) -> str | None:
        """Why this task cannot train with a method (its config class), or None when it can.

        The config gate turns the reason into `error:` and lists the methods that fit.
        """
        return None

    def model_kwargs(self, labels: list[str] | None) -> dict[str, Any]:
        """Extra `from_pretrained` arguments (classification: the label maps)."""
        return {}

    def adapt(self, model: Any, method: MethodConfig) -> Any:
        """Turn the loaded base into the model that trains (default: the method's `adapt`).

        A task that needs more than the method's model (preference tuning: its reference)
        builds it here, once, before any checkpoint is loaded into what trains.
        """
        return method.adapt(model, self)

    def forward(self, model: Any, batch: dict[str, Any]) -> Any:
        """The outputs of one batch; `outputs.loss` is its loss (default: `model(**batch)`)."""
        return model(**batch)

    def step_logs(self, outputs: Any) -> dict[str, Any]:
        """Scalars of one training batch logged under `train/` beside the loss, by name."""
        return {}

    def loss(self, outputs: Any, batch: dict[str, Any]) -> Any:
        """The training loss of one batch (default: the model's own)."""
        return outputs.loss

    def metrics(self, labels: Labels | None) -> dict[str, Any]:
        """The torchmetrics reported on validation and test, by name (`acc` -> `val/acc`)."""
        return {}

    def metric_inputs(self, outputs: Any, batch: dict[str, Any]) -> tuple[Any, Any]:
        """What the metrics are updated with: (predictions, targets) of one batch."""
        return outputs.logits, batch["labels"]

    def prepare_tokenizer(self, tokenizer: Any) -> Any:
        """Set up a tokenizer for prediction (generation pads on the left)."""
        return tokenizer

    def predict(self, predictor: Any, rows: list[dict[str, Any]], options: dict) -> list[dict]:
        """One output dict per row; `predictor` holds `model`, `tokenizer` and `info`."""
        raise NotImplementedError

    def signature(self) -> Any:
        """The MLflow `ModelSignature` of an exported model."""
        raise NotImplementedError

    def examples(self, datamodule: Any, n: int = 3) -> list[dict[str, Any]]:
        """A few test inputs in the prediction format (MLflow's input example)."""
        return []


class MethodConfig(Plugin):
    """Base of every fine-tuning method's config; its hooks are the method's code.

    The run's LightningModule loads the base model, calls `adapt` to turn it into what trains,
    trains it with `loss`, and saves it with `export`.
    """

    quantizable: ClassVar[bool] = False  # can train adapters on a bitsandbytes-quantised base

    def check(self, probe: ModelProbe, task: TaskConfig, problems: list[str]) -> None:
        """Append problems only visible with the model at hand (targets, layer counts)."""

    def load_base(self, model: ModelConfig, task: TaskConfig, labels: list[str] | None) -> Any:
        """A base model of the method's own (distillation: the teacher), or None for the usual."""
        return None

    def adapt(self, model: Any, task: TaskConfig) -> Any:
        """Turn the loaded base model into the model that trains (identity: full fine-tuning)."""
        return model

    def prepare(self, model: Any, datamodule: Any, task: TaskConfig) -> Any:
        """Reshape the model with the training data at hand, once before training (pruning)."""
        return model

    def reshape(self, model: Any, state_dict: dict[str, Any]) -> Any:
        """Reshape the model like saved weights of a model `prepare` reshaped (checkpoints)."""
        return model

    def loss(self, outputs: Any, batch: dict[str, Any], task: TaskConfig) -> Any:
        """The training objective (default: the task's loss)."""
        return task.loss(outputs, batch)

    def export(self, model: Any, folder: Path, base: ModelConfig, labels: list[str] | None) -> bool:
        """Write the trained model to `folder`; False leaves it to `save_pretrained`."""
        return False

    def load_export(self, folder: Path, task: TaskConfig, info: dict[str, Any]) -> Any:
        """Rebuild an export this method wrote itself (None: a PEFT adapter or a whole model)."""
        return None


class DataConfig(Plugin):
    """Base of every dataset's config; a family base (classification, instruction) sits between.

    `family` names what the data looks like (a task reads one family) and `datamodule` is the
    family's LightningDataModule; a dataset class adds the fields its loader reads and `load`.
    """

    family: ClassVar[str] = ""
    datamodule: ClassVar[str] = ""
