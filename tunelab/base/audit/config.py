"""The audit's settings: `python audit.py ... audit.near_threshold=0.8`; a run uses the defaults."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tunelab.base.schema import PositiveInt, Strict


class AuditConfig(Strict):
    """How the audit looks for duplicates, label errors, short texts and templated responses.

    Attributes:
        near_threshold: Jaccard similarity of two texts' character shingles from which they are
            near duplicates (MinHash/LSH finds the candidates, the exact Jaccard confirms them).
        shingle_chars: characters per shingle of the normalised text.
        num_perm: MinHash permutations (more: slower, closer estimates).
        label_model: fit the label-error model (frozen embeddings + logistic regression,
            out-of-fold probabilities fed to cleanlab); false skips it (the slow part).
        cv_folds: folds of the out-of-fold probabilities.
        short_words: texts of at most this many words are reported as short.
        templated_min: a response given verbatim to this many different prompts is templated.
        length_bias: preference data: a split is flagged when "prefer the longer response"
            picks the chosen one in a share of pairs at least this far from one half.
        examples: examples shown per finding in the report.
        embed_batch_size: texts per batch when embedding with the base encoder.
    """

    near_threshold: Annotated[float, Field(gt=0, le=1)] = 0.9
    shingle_chars: PositiveInt = 5
    num_perm: Annotated[int, Field(ge=16, le=1024)] = 128
    label_model: bool = True
    cv_folds: Annotated[int, Field(ge=2, le=20)] = 5
    short_words: Annotated[int, Field(ge=0)] = 1
    templated_min: Annotated[int, Field(ge=2)] = 5
    length_bias: Annotated[float, Field(gt=0, le=0.5)] = 0.1
    examples: PositiveInt = 5
    embed_batch_size: PositiveInt = 64
