"""Typed configs of the run-wide groups, and the two plug-in bases: methods and datasets.

Every group is a small pydantic model with `extra="forbid"`, so an unknown key is an error and
not a silent no-op. Methods and datasets are not listed here: a `method` or `data` group names
its config class with `_target_` (e.g. `modules.lora.LoraMethod`), that class holds the only
defaults and validates the group, and the validated object is what the code receives. Adding
one is one .py (the config class and its code) and one YAML.

This module imports pydantic only: validation runs before torch is imported.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainValidator

PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def batches_or_fraction(value: Any, zero: bool = True) -> int | float:
    """Lightning's rule for `limit_*_batches` and `val_check_interval`, kept exactly.

    An int counts batches (`1` is one batch), a float in [0.0, 1.0] is a share of the split
    (`1.0` is all of it); a whole float above 1 (`2.0`) counts batches, as Lightning reads it.
    """
    low, interval = ("0", "[0.0, 1.0]") if zero else ("1", "(0.0, 1.0]")
    rule = f"give an int >= {low} (batches) or a float in {interval} (share of the split)"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(rule)
    if isinstance(value, float) and value > 1 and value.is_integer():
        value = int(value)
    if value < 0 or (not zero and value == 0) or (isinstance(value, float) and value > 1):
        raise ValueError(f"{rule}; 1 is one batch, 1.0 the whole split")
    return value


# int or float as Lightning reads them (pydantic would turn 1 into 1.0 for a float field)
Batches = Annotated[int | float, PlainValidator(batches_or_fraction)]
SomeBatches = Annotated[int | float, PlainValidator(lambda v: batches_or_fraction(v, zero=False))]
Quantize = Literal["nf4", "fp4", "int8"]
DType = Literal["float32", "bfloat16", "float16"]
# Lightning's registered strategy names (multi-process ones: tunelab.config.strategies)
Strategy = Literal[
    "auto",
    "ddp",
    "ddp_find_unused_parameters_true",
    "fsdp",
    "fsdp_cpu_offload",
    "deepspeed_stage_1",
    "deepspeed_stage_2",
    "deepspeed_stage_2_offload",
    "deepspeed_stage_3",
    "deepspeed_stage_3_offload",
]


class Strict(BaseModel):
    """Base for every config: unknown keys are errors; `_target_` is allowed at group top."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


# ----------------------------------------------------------------------------- the rest
class ModelConfig(Strict):
    """The pretrained base model, and how it is loaded.

    Attributes:
        name_or_path: a Hugging Face Hub id or a local folder with `config.json`, weights and
            tokenizer files.
        max_length: tokens kept per example; longer texts are cut (decoders: prompt + response).
        dtype: the dtype the weights are loaded in.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant) to
            save memory.
        quantize: load the base through bitsandbytes in 4-bit (`nf4`, `fp4`) or 8-bit (`int8`)
            for QLoRA; methods that train the base weights refuse it.
        double_quant: also quantise the 4-bit quantisation constants (QLoRA's double
            quantisation).
        compute_dtype: the dtype 4-bit layers compute in.
    """

    name_or_path: str
    max_length: PositiveInt = 128
    dtype: DType = "float32"
    gradient_checkpointing: bool = False
    quantize: Quantize | None = None
    double_quant: bool = True
    compute_dtype: DType = "float32"
    quant_storage: DType | Literal["uint8"] = "uint8"  # 4-bit packing; FSDP needs compute_dtype
    # settings of the model's own config.json replaced at loading, e.g. dropout:
    # +model.config_overrides.hidden_dropout_prob=0.0 (checked against the config by preflight)
    config_overrides: dict[str, bool | int | float | str] = {}


class OptimConfig(Strict):
    """AdamW and its learning-rate schedule.

    Attributes:
        lr: the peak learning rate.
        weight_decay: AdamW's decoupled weight decay.
        warmup_ratio: share of the optimiser steps the learning rate warms up over.
        scheduler: the decay after warm-up.
        betas: AdamW's moment coefficients.
    """

    lr: Annotated[float, Field(gt=0, lt=1)]
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    warmup_ratio: Fraction = 0.06
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    betas: tuple[Probability, Probability] = (0.9, 0.999)
    # layer-wise lr decay: block i of L trains at lr * layer_decay^(L - i), embeddings one step
    # lower, the head at lr (tunelab.run.layer_decay); 1.0: one lr for all
    layer_decay: Annotated[float, Field(gt=0, le=1)] = 1.0
    # AdamW kernel: fused (one kernel for all tensors: full fine-tuning steps 1.35x faster than
    # torch's default on CPU, LoRA steps level; benchmarks/speed_switches.py), foreach, default
    implementation: Literal["fused", "foreach", "default"] = "fused"


# The `trainer.accelerator` names that mean a CUDA GPU (`auto` takes one when torch sees it).
CUDA_ACCELERATORS = ("gpu", "cuda")


class TrainerConfig(Strict):
    """The subset of `lightning.Trainer` arguments tunelab exposes.

    Attributes:
        accelerator: where training runs (`auto` takes a CUDA GPU when torch sees one).
        strategy: Lightning's strategy; several processes: `ddp`, `fsdp`, `deepspeed_*`.
        devices: devices (processes) per node, or `auto` for all.
        num_nodes: machines; the global batch is batch_size x devices x num_nodes x
            accumulate_grad_batches.
        max_epochs: epochs to train (-1: no limit).
        max_steps: optimiser steps to train (-1: no limit; the first limit reached stops).
        accumulate_grad_batches: batches whose gradients add up to one optimiser step.
        gradient_clip_val: largest gradient norm (null: no clipping).
        check_val_every_n_epoch: validate every n epochs.
        log_every_n_steps: steps between logged training metrics.
        num_sanity_val_steps: validation batches run before training (-1: all, 0: none).
        limit_train_batches: training batches per epoch: an int counts batches, a float is a
            share of the split.
        limit_val_batches: validation batches (int: batches, float: share; 0 skips validation).
        limit_test_batches: test batches (int: batches, float: share; 0 leaves test unread).
        fast_dev_run: run 1 (or n) batches of each stage, as a smoke test.
        deterministic: ask torch for deterministic algorithms (for GPUs: on a CPU a run is
            repeatable without it at a fixed thread count).
        enable_progress_bar: show Lightning's progress bar.
    """

    accelerator: Literal["cpu", "gpu", "cuda", "mps", "auto"] = "cpu"
    strategy: Strategy = "auto"
    devices: PositiveInt | Literal["auto"] = 1
    num_nodes: PositiveInt = 1
    # auto: bf16-mixed on CUDA with bf16, or on a CPU whose bf16 matmul is >= 1.5x fp32's
    precision: Literal["auto", "32-true", "32", "bf16-mixed", "bf16-true", "16-mixed"] = "32-true"
    max_epochs: Annotated[int, Field(ge=-1)] = 3
    max_steps: Annotated[int, Field(ge=-1)] = -1
    accumulate_grad_batches: PositiveInt = 1
    gradient_clip_val: Annotated[float, Field(ge=0)] | None = 1.0
    # int: batches, float: share of an epoch (Lightning's rule, see `batches_or_fraction`)
    val_check_interval: SomeBatches = 1.0
    check_val_every_n_epoch: PositiveInt = 1
    log_every_n_steps: PositiveInt = 10
    num_sanity_val_steps: Annotated[int, Field(ge=-1)] = 2
    limit_train_batches: SomeBatches = 1.0
    limit_val_batches: Batches = 1.0
    limit_test_batches: Batches = 1.0
    fast_dev_run: bool | PositiveInt = False
    deterministic: bool = False
    enable_progress_bar: bool = True
    # not a Trainer argument: steps between saves of `checkpoints/resume.ckpt` (null: after each
    # validation only); the pipeline pops it before building the Trainer
    checkpoint_every_n_steps: PositiveInt | None = 100
    # not a Trainer argument either: torch.compile the model's forward (tunelab.run.speed.compiled)
    compile: bool = False


class LoggerConfig(Strict):
    """MLflow tracking settings.

    Attributes:
        tracking_uri: the MLflow store (`MLFLOW_TRACKING_URI` wins when set).
        experiment_name: the MLflow experiment runs are filed under.
        log_model: log the export as an MLflow Model `model` (a pyfunc).
    """

    tracking_uri: str
    experiment_name: str = "tunelab"
    log_model: bool = True
    register_as: str | None = Field(default=None, pattern=r"^[\w.\-]+$")  # Model Registry name


class ExportConfig(Strict):
    """What is written after the test stage.

    Attributes:
        save_model: write the model (or adapter) in Hugging Face format to `export/`.
        merge: also write an adapter merged into its base (`merged_model/`).
    """

    save_model: bool = True
    merge: bool = False


class CallbackConfig(Strict):
    """One extra Lightning callback: `_target_` (inside this project) plus its arguments.

    Attributes:
        _target_: the callback class, a dotted path inside `callbacks/`; the other keys are
            its constructor's arguments.
    """

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    target: str = Field(alias="_target_", pattern=r"^callbacks\.[\w.]+$")


class RunConfig(Strict):
    """The whole composed config of one run; `task`, `method` and `data` are validated plug-ins.

    Attributes:
        name: the run's name: its folder under `output_root` and resume key.
        seed: seeds weights, data order and splits.
        output_root: the folder run folders are created in.
        method: the fine-tuning method (`method=...`, see that group).
        data: the dataset (`data=...`, see that group).
        model: the base model.
        optim: the optimiser.
        trainer: the Lightning Trainer settings.
        logger: MLflow tracking.
        export: what is written after testing.
        task: what the model predicts (`task=...`, see that group).
        sweep: an Optuna sweep instead of one run (`sweep=...`, see `sweep`).
    """

    name: str = Field(pattern=r"^[\w.\-]+$")
    seed: Annotated[int, Field(ge=0)] = 42
    output_root: str = "outputs"
    method: Any
    data: Any
    model: ModelConfig
    optim: OptimConfig
    trainer: TrainerConfig
    logger: LoggerConfig
    export: ExportConfig
    task: Any
    # extra Lightning callbacks beside the task's own (`task.callbacks`)
    callbacks: list[CallbackConfig] = []
    sweep: dict[str, Any] | None = None
    # true: continue the newest interrupted run with this config; false: a new run; or a run
    # folder / MLflow run id to continue (see tunelab.run.resume)
    resume: bool | str = True

    def as_dict(self) -> dict[str, Any]:
        """The config as plain data (JSON types, `_target_` keys): what MLflow and folders keep."""
        return self.model_dump(mode="json", by_alias=True)
