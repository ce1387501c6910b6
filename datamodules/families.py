"""Config bases of the two dataset families; a dataset's config class extends one of them.

A family's fields are the ones its LightningDataModule reads (batching, prompt rendering); a
dataset adds the fields its own `load` reads (where the files are, which columns, how to carve
splits). This module imports pydantic only, so validation stays fast.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field

from tunelab.base.plugin import DataConfig
from tunelab.base.schema import PositiveInt

Record = dict[str, Any]
SplitSize = Annotated[float, Field(gt=0)]  # a fraction (< 1) or a row count carved off a split


def _given(path: str) -> str:
    if path in ("", "???"):
        raise ValueError("is required: a local file or folder (under data.root), or a hub id")
    return path


RequiredPath = Annotated[str, AfterValidator(_given)]


class AuditedData(DataConfig):
    """The audit and cleaning settings every family shares (see `tunelab.base.audit`).

    Cleaning removes train rows only, logs how many and which, and is off by default; a run
    whose validation or test texts also sit in train says so in one warning line either way.

    Attributes:
        audit: audit the data first (`python audit.py` without training) and log the report to
            the run's MLflow run.
        drop_duplicates: remove train rows that repeat (exactly, or nearly) an earlier train row.
        drop_leaked: remove train rows whose text is (nearly) a validation or test text.
        drop_conflicts: remove train rows whose text also appears with another label (response);
            for preference pairs: pairs another pair of the same prompt reverses.
    """

    audit: bool = False
    drop_duplicates: bool = False
    drop_leaked: bool = False
    drop_conflicts: bool = False


class ClassificationData(AuditedData):
    """Text classification: `load` returns text/label splits; batches are padded dynamically.

    Subclasses implement `load(seed) -> (DatasetDict, label names or None)` whose splits
    `train`, `validation` and `test` have the columns `text` and `label`.

    Attributes:
        max_train_samples: train on the first n training rows only (null: all).
        batch_size: training rows per batch (per process).
        num_workers: DataLoader worker processes.
        group_by_length: batch rows of similar length together, batches in shuffled order.
    """

    family: ClassVar[str] = "classification"
    datamodule: ClassVar[str] = "datamodules.classification.ClassificationDataModule"

    max_train_samples: PositiveInt | None = None
    batch_size: PositiveInt = 32
    # validation/test rows per batch, sorted by length: 32 and 64 tie on a 2-core CPU (341/332
    # rows/s), 128 and 256 are slower (261/177; benchmarks/speed_switches.py)
    eval_batch_size: PositiveInt = 64
    num_workers: Annotated[int, Field(ge=0)] = 0
    group_by_length: bool = True
    # remove the train rows the label-error model suspects (see tunelab.base.audit.label_model)
    drop_label_issues: bool = False
    # train on train + validation: the final model of a recipe already chosen on validation.
    # Validation then sits in training, so its scores (and the best-checkpoint choice they make)
    # no longer measure anything; the test split stays unseen (docs/levers.md)
    refit: bool = False

    def load(self, seed: int) -> tuple[Any, list[str] | None]:
        """The train/validation/test splits (columns `text`, `label`) and the class names."""
        raise NotImplementedError

    def out_of_scope_label(self) -> str | None:
        """The class that means "none of the intents" (reported apart), if the data has one."""
        return None


class InstructionData(AuditedData):
    """Instruction tuning for decoders: `load` returns instruction/input/response records.

    Subclasses implement `load(seed) -> {"train": [...], "validation": [...], "test": [...]}`
    with records `{"instruction", "input", "response", "row"}`. `row` says where the example is
    in the source, for error messages: an int is a 0-based row of the source file (of train when
    the split was carved from it), a string a locator such as `PMID 123`. An optional `answer`
    is the record's gold option when the data has a closed answer set (`answer_options`).

    Attributes:
        template: the prompt format: `chat` (the tokenizer's chat template), `plain`
            (`### Instruction:` ... `### Response:`), `auto` (chat when the tokenizer has one).
        system_prompt: a system message put before every prompt (chat templates).
        packing: pack examples into full rows (attention and loss never cross examples).
        group_by_length: batch examples of similar length together, in shuffled order.
        skip_long_prompts: drop training examples whose prompt leaves no room for a response
            under `model.max_length` instead of stopping with an error.
        max_train_samples: train on the first n training examples only (null: all).
        batch_size: training examples per batch (per process).
        eval_batch_size: examples per validation and test batch.
        num_workers: DataLoader worker processes.
    """

    family: ClassVar[str] = "instruction"
    datamodule: ClassVar[str] = "datamodules.instruction.InstructionDataModule"

    template: Literal["auto", "chat", "plain"] = "auto"
    system_prompt: str | None = None
    packing: bool = False
    # training batches of similar length, in shuffled order (ignored when packing)
    group_by_length: bool = True
    skip_long_prompts: bool = False
    max_train_samples: PositiveInt | None = None
    batch_size: PositiveInt = 8
    eval_batch_size: PositiveInt = 16
    num_workers: Annotated[int, Field(ge=0)] = 0
    options: list[str] | None = None  # answer options scored by log-likelihood on test

    def load(self, seed: int) -> dict[str, list[Record]]:
        """Train/validation/test records."""
        raise NotImplementedError

    def answer_options(self) -> list[str] | None:
        """The closed set of answers (e.g. class names) a decoder is scored on, if any.

        With options, `callbacks.option_scoring` scores each test record's options by their
        log-likelihood after the prompt; the gold option is the record's `answer` field, or
        its `response` when it has none.
        """
        return self.options

    def answer_text(self, option: str) -> str:
        """The response text that stands for `option` (what the model was trained to write)."""
        return option


class PreferenceData(AuditedData):
    """Preference pairs for decoders: `load` returns (prompt, chosen, rejected) records.

    Subclasses implement `load(seed) -> {"train": [...], "validation": [...], "test": [...]}`
    with records `{"instruction", "input", "chosen", "rejected", "row"}` (the prompt is the
    instruction, plus its input, rendered as in instruction tuning), or, for unpaired data
    (KTO), `{"instruction", "input", "completion", "label", "row"}` with a boolean `label`
    (desirable or not). With `unpaired=true` pairs become two labelled completions each.

    Attributes:
        template: the prompt format: `chat` (the tokenizer's chat template), `plain`
            (`### Instruction:` ... `### Response:`), `auto` (chat when the tokenizer has one).
        system_prompt: a system message put before every prompt (chat templates).
        group_by_length: batch pairs of similar length together, in shuffled order.
        max_train_samples: train on the first n training examples only (null: all).
        batch_size: training examples per batch (per process).
        eval_batch_size: examples per validation and test batch.
        num_workers: DataLoader worker processes.
    """

    family: ClassVar[str] = "preference"
    datamodule: ClassVar[str] = "datamodules.preference.PreferenceDataModule"

    template: Literal["auto", "chat", "plain"] = "auto"
    system_prompt: str | None = None
    unpaired: bool = False  # KTO's layout (task.loss=kto)
    group_by_length: bool = True
    max_train_samples: PositiveInt | None = None
    batch_size: PositiveInt = 4
    eval_batch_size: PositiveInt = 8
    num_workers: Annotated[int, Field(ge=0)] = 0

    def load(self, seed: int) -> dict[str, list[Record]]:
        """Train/validation/test records."""
        raise NotImplementedError
