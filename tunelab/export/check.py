"""The export-time check: the export must predict what the PyTorch model predicts.

Both run through `Predictor` (the code predict.py and the pyfunc serve with) on rows of the run's
test split. Agreement is the share of rows whose text outputs (`label`, `generation`) are equal;
the largest difference is over numeric outputs (`probability`) of those rows. An export outside
the tolerance is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from tunelab.base.errors import TunelabError

LOW_BIT = ("int4", "q4_k_m")  # 4-bit exports: generations may part from fp32 on some rows


class ExportError(TunelabError):
    """An export could not be written, or predicts unlike the model it came from."""


@dataclass
class Agreement:
    """How an export's predictions compare with the PyTorch model's."""

    rows: int
    agreement: float
    max_difference: float

    def as_dict(self) -> dict[str, Any]:
        """Plain data for `model_info.json`."""
        return asdict(self)


@dataclass
class Tolerance:
    """The least agreement and the largest numeric difference an export may show."""

    min_agreement: float
    max_difference: float

    @classmethod
    def default(cls, quantize: str) -> Tolerance:
        """99% agreement (90% for 4-bit); 1e-3 unquantised, 0.1 quantised."""
        agreement = 0.9 if quantize in LOW_BIT else 0.99
        return cls(agreement, 1e-3 if quantize == "none" else 0.1)


def compare(expected: list[dict[str, Any]], got: list[dict[str, Any]]) -> Agreement:
    """Agreement of text outputs, and the largest difference of numeric outputs where they agree.

    A row whose label flipped counts against agreement only: its `probability` is that of
    another label, so comparing the two numbers would say nothing about the quantisation error.
    """
    same, worst = 0, 0.0
    for want, have in zip(expected, got, strict=True):
        texts = [k for k, v in want.items() if isinstance(v, str)]
        if not all(want[k] == have[k] for k in texts):
            continue
        same += 1
        numbers = [k for k, v in want.items() if isinstance(v, float)]
        worst = max([worst, *(abs(want[k] - have[k]) for k in numbers)])
    return Agreement(len(expected), same / max(len(expected), 1), worst)


def enforce(found: Agreement, tolerance: Tolerance, what: str) -> None:
    """Refuse an export outside `tolerance`."""
    if found.agreement < tolerance.min_agreement or found.max_difference > tolerance.max_difference:
        raise ExportError(
            f"{what} predicts unlike the PyTorch model on {found.rows} test rows: agreement "
            f"{found.agreement:.2%} (at least {tolerance.min_agreement:.0%} allowed), largest "
            f"probability difference {found.max_difference:.4f} (at most "
            f"{tolerance.max_difference} allowed). Nothing was written. Fix: a milder quantize=, "
            "or accept it explicitly with min_agreement= / max_difference="
        )


def predict_all(predictor: Any, rows: list[dict[str, Any]], batch_size: int) -> list[dict]:
    """The predictor's outputs for `rows`, in batches (greedy for generators)."""
    out: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        out += predictor.predict(rows[start : start + batch_size], do_sample=False)
    return out


def test_rows(config: dict[str, Any] | None, task: Any, n: int) -> list[dict[str, Any]]:
    """Up to `n` rows of the run's test split in the prediction format (the task's examples).

    Raises:
        ExportError: when the run's config or data cannot be read here.
    """
    if n == 0:
        return []
    if config is None:
        raise ExportError(
            "the source has no config.yaml, so its test data is unknown. Fix: export from the "
            "run folder or run id, or skip the check with check_rows=0"
        )
    from omegaconf import OmegaConf

    from tunelab.config.validate import validate
    from tunelab.run.build import build_datamodule

    try:
        datamodule = build_datamodule(validate(OmegaConf.create(config)))
        datamodule.setup("test")
    except TunelabError as err:
        raise ExportError(
            f"cannot read the run's test data for the export check: {err}\n"
            "Fix: make the run's data reachable here, or skip the check with check_rows=0"
        ) from err
    return task.examples(datamodule, n)
