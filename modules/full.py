"""Full fine-tuning: every weight of the pretrained model trains."""

from __future__ import annotations

from modules.base import FineTuneModule


class FullFineTune(FineTuneModule):
    """All parameters train; checkpoints and exports hold the whole model.

    The base `adapt` is already the identity, so this class only names the method.
    """
