"""Likely label errors: frozen sentence embeddings + logistic regression + cleanlab.

The base encoder of the run (e.g. all-MiniLM-L6-v2) embeds each train text (mean of its token
states, frozen); a logistic regression is cross-validated on the embeddings, and its out-of-fold
probabilities go to cleanlab's `find_label_issues`. Rows are ranked by self-confidence (the
probability the model gives the label as given), most suspicious first.
"""

from __future__ import annotations

from typing import Any

from tunelab.base.audit.config import AuditConfig
from tunelab.base.errors import ModelLoadError


def embed(texts: list[str], model_path: str, max_length: int, batch_size: int) -> Any:
    """Mean-pooled last hidden states of the frozen encoder, one L2-normalised row per text."""
    import numpy as np
    import torch
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        encoder = AutoModel.from_pretrained(model_path).eval()
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"the label-error model cannot load the encoder '{model_path}': "
            f"{str(err).splitlines()[0]}\nFix: a local model folder, or audit.label_model=false"
        ) from err
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # less padding per batch
    out = np.zeros((len(texts), encoder.config.hidden_size), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows],
                truncation=True,
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
            states = encoder(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[rows] = torch.nn.functional.normalize(pooled, dim=-1).numpy()
    return out


def out_of_fold(features: Any, labels: Any, folds: int, seed: int = 0) -> Any:
    """Cross-validated predicted probabilities of a logistic regression, one row per text."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = int(np.bincount(labels).min())
    splitter = StratifiedKFold(
        n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed
    )
    model = LogisticRegression(C=10.0, max_iter=300)
    return cross_val_predict(model, features, labels, cv=splitter, method="predict_proba")


def label_issues(
    texts: list[str], labels: list[str], model_path: str, max_length: int, settings: AuditConfig
) -> list[dict[str, Any]]:
    """Suspected label errors among `texts`, most suspicious first.

    Returns:
        One dict per suspect: `row` (position in the split), `given` and `suggested` labels,
        and `quality` (the probability of the given label, out of fold).
    """
    import numpy as np
    from cleanlab.filter import find_label_issues

    classes = sorted(set(labels))
    if len(classes) < 2 or len(texts) < 2 * len(classes):
        return []
    index = {name: k for k, name in enumerate(classes)}
    y = np.array([index[label] for label in labels])
    features = embed(texts, model_path, max_length, settings.embed_batch_size)
    probs = out_of_fold(features, y, settings.cv_folds)
    # n_jobs=1: cleanlab's default forks a process pool, which can deadlock in a process that
    # already runs threads (MLflow, Lightning), as a run does
    ranked = find_label_issues(y, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
    return [
        {
            "row": int(i),
            "given": labels[i],
            "suggested": classes[int(probs[i].argmax())],
            "quality": round(float(probs[i, y[i]]), 4),
        }
        for i in ranked
    ]
