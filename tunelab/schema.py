"""Typed schemas for every config group, checked before anything heavy is imported.

Each group is a small pydantic model with `extra="forbid"`, so an unknown key is an error and
not a silent no-op. Methods and datasets are selected by their `name` field; adding one means one
schema class here, one module, one YAML.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


class Strict(BaseModel):
    """Base for every schema: unknown keys are errors, `_target_` is allowed at group top."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Targeted(Strict):
    """A group instantiated from `_target_` (a dotted class path inside this repo)."""

    target: str = Field(alias="_target_", pattern=r"^[A-Za-z_][\w.]*$")


# ----------------------------------------------------------------------------- methods
class FullMethod(Targeted):
    """Full fine-tuning: every weight trains."""

    name: Literal["full"]


class LoraMethod(Targeted):
    """LoRA adapters via peft."""

    name: Literal["lora"]
    r: PositiveInt = 8
    alpha: Annotated[float, Field(gt=0)] = 16
    dropout: Probability = 0.0
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class FreezeMethod(Targeted):
    """Only the top `trainable_layers` layers (plus pooler/norm and head) train."""

    name: Literal["freeze"]
    trainable_layers: PositiveInt = 2


class DoraMethod(LoraMethod):
    """DoRA via peft: LoRA's fields, weight-decomposed update."""

    name: Literal["dora"]


class IA3Method(Targeted):
    """(IA)^3 via peft; null module lists use peft's defaults for the architecture."""

    name: Literal["ia3"]
    target_modules: list[str] | None = None
    feedforward_modules: list[str] | None = None

    @model_validator(mode="after")
    def _feedforward_subset(self) -> IA3Method:
        extra = set(self.feedforward_modules or []) - set(self.target_modules or [])
        if self.target_modules is not None and extra:
            raise ValueError(f"feedforward_modules {sorted(extra)} are not in target_modules")
        return self


class AdapterMethod(Targeted):
    """Houlsby bottleneck adapters after the listed linear layers."""

    name: Literal["adapter"]
    target_modules: list[str] = Field(min_length=1)
    reduction_factor: PositiveInt = 16
    bottleneck_size: PositiveInt | None = None
    activation: Literal["relu", "gelu", "tanh", "silu"] = "gelu"
    train_layer_norms: bool = True


class PrefixMethod(Targeted):
    """Prefix tuning via peft."""

    name: Literal["prefix"]
    num_virtual_tokens: PositiveInt = 20
    projection: bool = False
    encoder_hidden_size: PositiveInt = 384


class PromptMethod(Targeted):
    """Prompt tuning via peft (random or text-initialised soft prompt)."""

    name: Literal["prompt"]
    num_virtual_tokens: PositiveInt = 20
    init_text: str | None = None


class PTuningMethod(Targeted):
    """P-tuning via peft (MLP prompt encoder)."""

    name: Literal["ptuning"]
    num_virtual_tokens: PositiveInt = 20
    encoder_hidden_size: PositiveInt = 128


class DistillMethod(Targeted):
    """Knowledge distillation from `teacher` into a `student_layers`-layer copy of it."""

    name: Literal["distill"]
    teacher: str
    tracking_uri: str | None = None
    student_layers: PositiveInt = 3
    temperature: Annotated[float, Field(gt=0)] = 2.0
    alpha: Probability = 0.5

    @model_validator(mode="after")
    def _teacher_given(self) -> DistillMethod:
        if self.teacher in ("", "???"):
            raise ValueError(
                "method.teacher is required: an export folder, a .ckpt or mlflow:<run_id>"
            )
        return self


class QLoraMethod(LoraMethod):
    """QLoRA: LoRA (peft) on a base quantised by bitsandbytes (4-bit nf4/fp4 or int8)."""

    name: Literal["qlora"]
    r: PositiveInt = 16
    alpha: Annotated[float, Field(gt=0)] = 32
    dropout: Probability = 0.05
    quantize: Literal["nf4", "fp4", "int8"] = "nf4"
    double_quant: bool = True
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"


METHODS: dict[str, type[Targeted]] = {
    "full": FullMethod,
    "lora": LoraMethod,
    "freeze": FreezeMethod,
    "dora": DoraMethod,
    "ia3": IA3Method,
    "adapter": AdapterMethod,
    "prefix": PrefixMethod,
    "prompt": PromptMethod,
    "ptuning": PTuningMethod,
    "distill": DistillMethod,
    "qlora": QLoraMethod,
}


# ----------------------------------------------------------------------------- data
class DataBase(Targeted):
    """Fields every dataset shares: where it is, how it is split and batched."""

    root: str = "data"
    path: str
    hub_id: str | None = None
    val_size: Annotated[float, Field(gt=0)] = 0.1
    test_size: Annotated[float, Field(gt=0)] = 0.1
    max_train_samples: PositiveInt | None = None
    num_workers: Annotated[int, Field(ge=0)] = 0

    @model_validator(mode="after")
    def _path_given(self) -> DataBase:
        if self.path in ("", "???"):
            raise ValueError("data.path is required: a local file/folder or a hub id")
        return self


class ClassificationData(DataBase):
    """Text classification datasets (banking77, text_classification)."""

    name: Literal["banking77", "text_classification"]
    text_column: str = "text"
    label_column: str = "label"
    batch_size: PositiveInt = 32
    eval_batch_size: PositiveInt = 128
    group_by_length: bool = True

    @property
    def task(self) -> str:
        """The model task this data feeds."""
        return "sequence_classification"


class InstructionData(DataBase):
    """Instruction-tuning data for decoders: instruction [+ input] -> response."""

    name: Literal["instruction", "medquad", "pubmedqa"]
    instruction_field: str = "instruction"
    input_field: str | None = None
    response_field: str = "response"
    template: Literal["auto", "chat", "plain"] = "auto"
    system_prompt: str | None = None
    packing: bool = False
    skip_long_prompts: bool = False
    batch_size: PositiveInt = 8
    eval_batch_size: PositiveInt = 16

    @property
    def task(self) -> str:
        """The model task this data feeds."""
        return "causal_lm"


class MedQuadData(InstructionData):
    """MedQuAD XML collections, split by document."""

    name: Literal["medquad"]
    folders: list[str] = Field(default=["5_NIDDK_QA", "6_NINDS_QA"], min_length=1)


class PubMedQAData(InstructionData):
    """PubMedQA PQA-L: question + contexts -> long answer (+ decision)."""

    name: Literal["pubmedqa"]
    append_decision: bool = True


DATASETS: dict[str, type[Targeted]] = {
    "banking77": ClassificationData,
    "text_classification": ClassificationData,
    "instruction": InstructionData,
    "medquad": MedQuadData,
    "pubmedqa": PubMedQAData,
}


# ----------------------------------------------------------------------------- the rest
class ModelConfig(Strict):
    """The pretrained base model."""

    name_or_path: str
    task: Literal["sequence_classification", "causal_lm"]
    max_length: PositiveInt = 128
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    gradient_checkpointing: bool = False


class OptimConfig(Strict):
    """AdamW and its learning-rate schedule."""

    lr: Annotated[float, Field(gt=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_ratio: Fraction = 0.0
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    betas: tuple[Probability, Probability] = (0.9, 0.999)


class TrainerConfig(Strict):
    """The subset of `lightning.Trainer` arguments tunelab exposes."""

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    devices: PositiveInt | Literal["auto"] = 1
    precision: Literal["32-true", "32", "bf16-mixed", "bf16-true", "16-mixed"] = "32-true"
    max_epochs: Annotated[int, Field(ge=-1)] = 3
    max_steps: Annotated[int, Field(ge=-1)] = -1
    accumulate_grad_batches: PositiveInt = 1
    gradient_clip_val: Annotated[float, Field(ge=0)] | None = 1.0
    val_check_interval: Annotated[float, Field(gt=0)] = 1.0
    check_val_every_n_epoch: PositiveInt = 1
    log_every_n_steps: PositiveInt = 10
    num_sanity_val_steps: Annotated[int, Field(ge=-1)] = 2
    limit_train_batches: Annotated[float, Field(gt=0)] = 1.0
    limit_val_batches: Annotated[float, Field(ge=0)] = 1.0
    limit_test_batches: Annotated[float, Field(ge=0)] = 1.0
    fast_dev_run: bool | PositiveInt = False
    deterministic: bool = False
    enable_progress_bar: bool = True


class LoggerConfig(Strict):
    """MLflow tracking settings."""

    tracking_uri: str
    experiment_name: str = "tunelab"
    log_model: bool = True


class ExportConfig(Strict):
    """What is written after the test stage."""

    save_model: bool = True
    merge: bool = False


class RunConfig(Strict):
    """The whole composed config of one run."""

    name: str = Field(pattern=r"^[\w.\-]+$")
    seed: Annotated[int, Field(ge=0)] = 42
    output_root: str = "outputs"
    method: dict[str, Any]
    data: dict[str, Any]
    model: ModelConfig
    optim: OptimConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    export: ExportConfig
    sweep: dict[str, Any] | None = None
