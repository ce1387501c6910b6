"""Mean pooling for encoder classifiers, saved with the model's config so loading restores it.

Hugging Face's `XForSequenceClassification` classifies the first token's vector (BERT: through
its tanh `pooler`). Sentence encoders such as all-MiniLM-L6-v2 were trained to be read by the
mean of their token vectors instead (Reimers and Gurevych 2019), so the CLS head throws their
training away. `task.pooling=mean` loads the same architecture with one change: the classifier
reads the attention-masked mean of the last hidden states (BERT's pooler is dropped, as it is
no longer used). The model's `config.json` records `classifier_pooling: mean` (the name
ModernBERT's config uses for the same choice), and `AutoModelForPooledClassification` reads it
back, so an export, a checkpoint or a distillation teacher loads with the head it trained with:

    AutoModelForPooledClassification.from_pretrained("outputs/<run>/export")

Architectures whose classifier is a linear layer over the pooled vector (the BERT family) are
supported; a head that reads the whole sequence (RoBERTa's) is fed the mean as a 1-token sequence.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

POOLINGS = ("cls", "mean")
CONFIG_KEY = "classifier_pooling"


def mean_of_tokens(hidden: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mean of each row's token vectors, padding left out (`mask`: 1 for real tokens)."""
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class MeanPooling:
    """Mixin over an `XForSequenceClassification` class: its classifier reads the token mean."""

    def __init__(self, config: Any, *args: Any, classifier_pooling: str = "mean", **kwargs: Any):
        config.classifier_pooling = classifier_pooling
        super().__init__(config, *args, **kwargs)
        encoder = getattr(self, self.base_model_prefix)
        if getattr(encoder, "pooler", None) is not None:  # BERT's CLS pooler: unused now
            encoder.pooler = None

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **inputs: Any,
    ) -> Any:
        """Logits (and cross-entropy against `labels`) from the mean of the last hidden states."""
        from transformers.modeling_outputs import SequenceClassifierOutput

        encoder = getattr(self, self.base_model_prefix)
        inputs.pop("return_dict", None)
        out = encoder(input_ids, attention_mask=attention_mask, return_dict=True, **inputs)
        pooled = mean_of_tokens(out.last_hidden_state, attention_mask)
        if isinstance(self.classifier, torch.nn.Linear):
            logits = self.classifier(getattr(self, "dropout", torch.nn.Identity())(pooled))
        else:  # a head reading a sequence (RoBERTa's): the mean as its one token
            logits = self.classifier(pooled.unsqueeze(1))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.float(), labels.view(-1))
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=out.hidden_states)


@functools.cache
def mean_pooled(cls: type) -> type:
    """`cls` (a sequence-classification class) with the `MeanPooling` head."""
    return type(f"MeanPooled{cls.__name__}", (MeanPooling, cls), {"__module__": __name__})


def _native(config: Any) -> bool:
    """The architecture has its own `classifier_pooling` setting (ModernBERT)."""
    return CONFIG_KEY in inspect.signature(type(config).__init__).parameters


def model_class(config: Any, pooling: str | None) -> type:
    """The class for `config` with `pooling` (None: what the config says, else `cls`)."""
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    pooling = pooling or getattr(config, CONFIG_KEY, None) or "cls"
    if pooling not in POOLINGS:
        raise ValueError(f"{CONFIG_KEY}={pooling!r}: use one of {POOLINGS}")
    if pooling == "cls" or _native(config):
        return AutoModelForSequenceClassification
    return mean_pooled(MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[type(config)])


class AutoModelForPooledClassification:
    """`AutoModelForSequenceClassification` that honours `classifier_pooling` (cls or mean).

    `from_pretrained(path, classifier_pooling="mean", ...)` asks for a pooling; without it the
    folder's `config.json` decides (a plain checkpoint: `cls`, the usual head).
    """

    @classmethod
    def from_pretrained(cls, name_or_path: Any, **kwargs: Any) -> Any:
        """Load `name_or_path` with the pooling asked for, or the one its config records."""
        from transformers import AutoConfig

        pooling = kwargs.pop(CONFIG_KEY, None)
        config = AutoConfig.from_pretrained(name_or_path)
        found = model_class(config, pooling)
        plain = found.__name__ == "AutoModelForSequenceClassification"
        if pooling and (not plain or hasattr(config, CONFIG_KEY)):  # else no such init argument
            kwargs[CONFIG_KEY] = pooling
        return found.from_pretrained(name_or_path, **kwargs)

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> Any:
        """A randomly initialised model for `config` (its `classifier_pooling`, else cls)."""
        found = model_class(config, None)
        if found.__name__.startswith("MeanPooled"):
            return found(config, **kwargs)
        return found.from_config(config, **kwargs)


def pooling_of(model: Any) -> str:
    """`cls` or `mean`: how a (possibly PEFT-wrapped) classifier pools."""
    config = getattr(model, "config", None)
    return getattr(config, CONFIG_KEY, None) or "cls"


@contextmanager
def classifier_inputs(
    model: Any, wanted: Any = True, keep_graph: bool = False
) -> Iterator[list[torch.Tensor]]:
    """Collect the vectors the classification head reads, one tensor per forward pass.

    The features of the out-of-scope detectors (Podolskiy et al. 2021 read BERT's pooled
    vector): the pooled vector of a BERT-style head, the first token's for a sequence head.
    Nothing is collected when `wanted` is falsy or the model has no such head (ONNX). They are
    detached float32 copies unless `keep_graph` (a loss on them, the contrastive warm-up).
    """
    found: list[torch.Tensor] = []
    named = getattr(model, "named_modules", None)
    heads = [m for n, m in named() if n.split(".")[-1] in ("classifier", "score")] if named else []
    if not wanted or not heads:
        yield found
        return
    head = heads[0]

    def keep(module: Any, args: tuple) -> None:
        vector = args[0][:, 0] if args[0].dim() == 3 else args[0]
        found.append(vector if keep_graph else vector.detach().float())

    handle = head.register_forward_pre_hook(keep)
    try:
        yield found
    finally:
        handle.remove()
