"""Out-of-scope detection beyond the extra class: a score, a threshold chosen on validation.

A classifier trained with an out-of-scope class (CLINC150's `oos`) answers `oos` when that class
wins. A detector adds a second way: a score per query that grows with how far the query is from
the in-scope intents, and a threshold above which the answer is `oos` whatever class won.

- `msp`: one minus the largest softmax probability of an in-scope class (Hendrycks and Gimpel
  2017; Larson et al. 2019's threshold baseline);
- `energy`: minus the log-sum-exp of the in-scope logits (Liu et al. 2020);
- `mahalanobis`: the smallest Mahalanobis distance from the vector the classifier reads to an
  in-scope class mean, with one covariance shared by all classes, both fitted on the training
  split (Lee et al. 2018; Podolskiy et al. 2021 on intent classifiers).

The threshold is the one that maximises in-scope accuracy plus out-of-scope recall on the
validation split (the two numbers of Larson et al.), or, with `in_scope_drop`, the one with the
highest recall that keeps in-scope accuracy within that much of the extra class alone. The
fitted detector is saved beside the exported model (`out_of_scope.json`, and
`out_of_scope.safetensors` for the Mahalanobis statistics) so that every way of predicting
answers `oos` the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from tunelab.base.errors import ModelLoadError

KINDS = ("msp", "energy", "mahalanobis")
INFO = "out_of_scope.json"
TENSORS = "out_of_scope.safetensors"


@dataclass
class Detector:
    """A fitted detector: its score, threshold and what it answers.

    Attributes:
        kind: `msp`, `energy` or `mahalanobis`.
        threshold: a score above it means out of scope.
        label: the answer then (`oos`).
        oos_index: the out-of-scope class id (its logit is left out of `msp` and `energy`).
        validation: what the threshold scored on validation (in-scope accuracy, OOS recall).
        means: the in-scope class means (`mahalanobis`).
        precision: the inverse of the shared covariance (`mahalanobis`).
    """

    kind: str
    threshold: float
    label: str
    oos_index: int
    validation: dict[str, float] = field(default_factory=dict)
    means: torch.Tensor | None = None
    precision: torch.Tensor | None = None

    def scores(self, logits: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """One score per row: higher is further out of scope."""
        logits = logits.float()
        keep = [i for i in range(logits.shape[-1]) if i != self.oos_index]
        if self.kind == "msp":
            return 1 - torch.softmax(logits, dim=-1)[:, keep].max(dim=-1).values
        if self.kind == "energy":
            return -torch.logsumexp(logits[:, keep], dim=-1)
        if features is None:
            raise ModelLoadError(
                "this export's out-of-scope detector is `mahalanobis`, which reads the vector the "
                "classification head reads; this runtime (ONNX) gives logits only. Fix: serve the "
                "PyTorch export, or export from a run whose detector is msp or energy (or delete "
                f"{INFO} from the source export to serve the out-of-scope class alone)"
            )
        return mahalanobis(features.float(), self.means, self.precision)

    def flags(self, logits: torch.Tensor, features: torch.Tensor | None) -> torch.Tensor:
        """True where the answer is out of scope: the OOS class won, or the score is too high."""
        won = logits.argmax(dim=-1) == self.oos_index
        return won | (self.scores(logits, features) > self.threshold)

    def save(self, folder: Path) -> None:
        """Write `out_of_scope.json` (and `.safetensors`) into `folder`."""
        from safetensors.torch import save_file

        info = {k: v for k, v in asdict(self).items() if k not in ("means", "precision")}
        (Path(folder) / INFO).write_text(json.dumps(info, indent=2))
        if self.means is not None:
            tensors = {"means": self.means, "precision": self.precision}
            save_file({k: v.contiguous() for k, v in tensors.items()}, Path(folder) / TENSORS)


def copy_detector(source: Path, target: Path) -> None:
    """Copy the detector files of export folder `source` (if any) into `target`."""
    import shutil

    for name in (INFO, TENSORS):
        if (Path(source) / name).is_file():
            shutil.copy2(Path(source) / name, Path(target) / name)


def read_detector(folder: Path) -> Detector | None:
    """The detector saved beside an exported model, or None when it has none."""
    path = Path(folder) / INFO
    if not path.is_file():
        return None
    detector = Detector(**json.loads(path.read_text()))
    if detector.kind == "mahalanobis":
        from safetensors.torch import load_file

        tensors = load_file(Path(folder) / TENSORS)
        detector.means, detector.precision = tensors["means"], tensors["precision"]
    return detector


def fit_gaussian(
    features: torch.Tensor, labels: torch.Tensor, oos_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """In-scope class means and the inverse of their shared covariance (pseudo-inverse)."""
    features, labels = features.float(), labels.long()
    keep = labels != oos_index
    features, labels = features[keep], labels[keep]
    classes = int(labels.max()) + 1
    sums = torch.zeros(classes, features.shape[1]).index_add_(0, labels, features)
    counts = torch.bincount(labels, minlength=classes).clamp(min=1).unsqueeze(1)
    means = sums / counts
    centred = features - means[labels]
    covariance = centred.T @ centred / max(len(features) - 1, 1)
    return means, torch.linalg.pinv(covariance, hermitian=True)


def mahalanobis(features: torch.Tensor, means: torch.Tensor, precision: torch.Tensor) -> Any:
    """The smallest squared Mahalanobis distance of each row to a class mean.

    Expanded as x'Px - 2x'Pm + m'Pm, so no rows x classes x hidden tensor is made (in float64:
    the expansion cancels digits near a mean).
    """
    features, means, precision = features.double(), means.double(), precision.double()
    projected = features @ precision
    own = (projected * features).sum(dim=1, keepdim=True)
    centres = ((means @ precision) * means).sum(dim=1)
    return (own - 2 * projected @ means.T + centres).min(dim=1).values.float()


def measure(flags: torch.Tensor, predicted: torch.Tensor, labels: torch.Tensor, oos: int) -> dict:
    """In-scope accuracy, OOS recall and OOS precision of the answers `flags` and `predicted`."""
    is_oos = labels == oos
    correct = (predicted == labels) & ~flags
    flagged = flags.sum().clamp(min=1)
    return {
        "in_scope_acc": float(correct[~is_oos].float().mean()) if (~is_oos).any() else 0.0,
        "recall": float(flags[is_oos].float().mean()) if is_oos.any() else 0.0,
        "precision": float((flags & is_oos).sum() / flagged),
    }


def auroc(scores: torch.Tensor, is_oos: torch.Tensor) -> float:
    """Area under the ROC curve of the scores for telling OOS from in-scope rows.

    The Mann-Whitney statistic: the chance that an OOS row scores above an in-scope one (ties
    count half). Computed on the raw scores: torchmetrics would squash scores outside [0, 1]
    through a sigmoid first, which ties every large Mahalanobis distance.
    """
    scores = scores.double()
    positive, negative = scores[is_oos], scores[~is_oos]
    if not len(positive) or not len(negative):
        return float("nan")
    above = (positive.unsqueeze(1) > negative.unsqueeze(0)).sum()
    ties = (positive.unsqueeze(1) == negative.unsqueeze(0)).sum()
    return float((above + 0.5 * ties) / (len(positive) * len(negative)))


def rank(found: dict[str, float], in_scope_drop: float | None) -> tuple[float, ...]:
    """How a threshold's validation scores rank (higher is better) under the rule in use.

    Without `in_scope_drop`: in-scope accuracy + OOS recall (Larson et al.'s two numbers, each
    weighted by its own row count). With it: OOS recall first, in-scope accuracy on ties.
    """
    if in_scope_drop is None:
        return (found["in_scope_acc"] + found["recall"],)
    return (found["recall"], found["in_scope_acc"])


def choose_threshold(
    detector: Detector,
    logits: torch.Tensor,
    features: Any,
    labels: torch.Tensor,
    in_scope_drop: float | None = None,
) -> Detector:
    """Set the threshold that ranks best on these rows (see `rank`).

    With `in_scope_drop`, only thresholds whose in-scope accuracy is at most that much below the
    extra class alone's are eligible: the detector adds OOS recall and costs at most
    `in_scope_drop` of in-scope accuracy (0.005: half a point). The highest candidate flags
    nothing by score, so one threshold is always eligible.
    """
    scores = detector.scores(logits, features)
    predicted, won = logits.argmax(dim=-1), logits.argmax(dim=-1) == detector.oos_index
    floor = -1.0
    if in_scope_drop is not None:
        floor = measure(won, predicted, labels, detector.oos_index)["in_scope_acc"] - in_scope_drop
    candidates = torch.unique(scores)
    if len(candidates) > 2000:  # evenly spaced quantiles are as good and far fewer
        candidates = torch.quantile(scores, torch.linspace(0, 1, 2001))
    best: tuple[float, ...] | None = None
    for threshold in candidates.tolist():
        found = measure(won | (scores > threshold), predicted, labels, detector.oos_index)
        if found["in_scope_acc"] < floor - 1e-6:  # float32 means
            continue
        score = rank(found, in_scope_drop)
        if best is None or score > best:
            best, detector.threshold, detector.validation = score, threshold, found
    return detector
