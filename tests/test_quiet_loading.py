"""Loading an adapter export prints nothing alarming about the head the adapter replaces."""

from __future__ import annotations

from transformers import AutoModelForSequenceClassification
from transformers.utils import logging as hf_logging

from tunelab.serving.inference import base_without_its_head_quietly


def said(capfd, caplog) -> str:
    """What transformers printed or logged since the last call."""
    text = capfd.readouterr().err + caplog.text
    caplog.clear()
    return text


def test_the_bases_new_head_is_loaded_without_a_report(tiny_bert, capfd, caplog):
    outer = hf_logging.get_verbosity()  # another test's run may have lowered it process-wide
    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_warning()
    hf_logging.enable_progress_bar()
    try:
        _check_scoped_quiet_load(tiny_bert, capfd, caplog)
    finally:
        hf_logging.set_verbosity(outer)
        if not bar:
            hf_logging.disable_progress_bar()


def _check_scoped_quiet_load(tiny_bert, capfd, caplog) -> None:
    AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    assert "LOAD REPORT" in said(capfd, caplog)  # what transformers says unscoped
    before = hf_logging.get_verbosity()
    with base_without_its_head_quietly():
        AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=4)
    err = said(capfd, caplog)
    assert "LOAD REPORT" not in err and "newly initialized" not in err
    assert "Loading weights" not in err
    assert hf_logging.get_verbosity() == before  # scoped to the load
    assert hf_logging.is_progress_bar_enabled()
