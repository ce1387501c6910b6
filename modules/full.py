"""Full fine-tuning: every weight of the base model (and the task head) trains."""

from __future__ import annotations

from tunelab.base.plugin import MethodConfig


class FullMethod(MethodConfig):
    """Every weight trains; the export is a whole Hugging Face model."""
