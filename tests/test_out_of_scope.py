"""Out-of-scope detection: the detectors' arithmetic, then a run that fits, tests and exports one.

The run treats one of the four fixture intents (`refund`) as the out-of-scope class; the
detector chosen on validation travels with the export, and predict.py, the in-process predictor
and the logged MLflow Model all answer `refund` for the rows it flags.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_overrides, trained

from tunelab.base import outofscope
from tunelab.base.outofscope import Detector

TEXTS = ["i lost my card please", "exchange rate for euro now", "refund status today", "top up"]
CALLBACK = "+callbacks=[{_target_: callbacks.out_of_scope.OutOfScopeDetection, detector: %s}]"


def test_mahalanobis_distance_is_the_nearest_class_under_the_shared_covariance():
    torch.manual_seed(0)
    features = torch.randn(400, 3) * torch.tensor([1.0, 2.0, 0.5])
    labels = torch.arange(400) % 2  # two classes, class 2 is out of scope and has no rows
    features[labels == 1] += 5
    means, precision = outofscope.fit_gaussian(features, labels, oos_index=2)
    assert torch.allclose(means[1] - means[0], torch.full((3,), 5.0), atol=0.5)
    x = torch.tensor([[0.0, 0.0, 0.0], [5.0, 5.0, 5.0], [0.0, 0.0, 3.0]])
    expected = [
        float((r - m) @ precision @ (r - m)) for r, m in zip(x, means[[0, 1, 0]], strict=True)
    ]
    assert outofscope.mahalanobis(x, means, precision).tolist() == pytest.approx(expected)
    assert expected[2] > 20 * max(expected[:2])  # far along the narrow axis: far out of scope


def test_threshold_maximises_in_scope_accuracy_plus_recall_on_the_rows_given():
    # class 1 is out of scope; rows 0-3 in scope (confident), rows 4-5 out of scope (unsure)
    logits = torch.tensor([[4.0, 0], [3, 0], [5, 0], [4, 0], [0.5, 0], [0.2, 0]])
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    detector = outofscope.choose_threshold(Detector("msp", 0.0, "oos", 1), logits, None, labels)
    assert detector.validation == {"in_scope_acc": 1.0, "recall": 1.0, "precision": 1.0}
    flags = detector.flags(logits, None)
    assert flags.tolist() == [False] * 4 + [True] * 2
    energy = Detector("energy", 0.0, "oos", 1).scores(logits, None)
    assert energy.tolist() == pytest.approx((-logits[:, 0]).tolist())  # one in-scope logit


def test_held_in_scope_rule_takes_the_most_recall_that_costs_at_most_the_drop():
    # class 2 is out of scope. In scope: 8 rows confident, rows 8-9 right but unsure (margins
    # 0.2, 0.25). Out of scope: row 10 very unsure (0.1), rows 11-12 less unsure than rows 8-9.
    margins = [5.0] * 8 + [0.2, 0.25, 0.1, 0.3, 0.3]
    logits = torch.tensor([[m, 0.0, -9.0] for m in margins])
    labels = torch.tensor([0] * 10 + [2] * 3)

    def choose(in_scope_drop: float | None) -> Detector:
        detector = Detector("msp", 0.0, "oos", 2)
        return outofscope.choose_threshold(detector, logits, None, labels, in_scope_drop)

    by_sum = choose(None).validation  # all recall for two in-scope rows (1.8 > 1.33)
    assert (by_sum["in_scope_acc"], by_sum["recall"]) == pytest.approx((0.8, 1.0))
    held = choose(0.1)  # losing rows 8-9 costs 0.2: only row 10 is flagged
    assert (held.validation["in_scope_acc"], held.validation["recall"]) == pytest.approx((1, 1 / 3))
    assert held.flags(logits, None).tolist() == [False] * 10 + [True, False, False]
    wider = choose(0.2).validation
    assert (wider["in_scope_acc"], wider["recall"]) == pytest.approx((0.8, 1.0))


def test_a_bad_threshold_rule_is_refused_with_every_problem():
    from callbacks.out_of_scope import OutOfScopeDetection
    from tunelab.base.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        OutOfScopeDetection(detector="knn", in_scope_drop=5)
    assert "detector='knn'" in str(err.value) and "in_scope_drop=5" in str(err.value)


def test_a_detector_saves_and_reads_back_identically(tmp_path: Path):
    means, precision = torch.randn(3, 4), torch.eye(4)
    detector = Detector("mahalanobis", 1.5, "oos", 3, {"recall": 0.5}, means, precision)
    detector.save(tmp_path)
    again = outofscope.read_detector(tmp_path)
    assert (again.kind, again.threshold, again.label, again.oos_index) == (
        "mahalanobis",
        1.5,
        "oos",
        3,
    )
    assert torch.equal(again.means, means) and torch.equal(again.precision, precision)
    assert outofscope.read_detector(tmp_path / "nothing") is None


@pytest.fixture(scope="module")
def detected(tmp_path_factory, tiny_bert: Path, intent_data: Path, one_torch_thread):
    """A full fine-tuning run with `refund` as the out-of-scope class and a Mahalanobis detector."""
    folder = tmp_path_factory.mktemp("oos")
    args = [*tiny_overrides(tiny_bert, intent_data), "method=full", "optim.lr=1e-3"]
    args += ["data.out_of_scope=refund", CALLBACK % "mahalanobis"]
    run, run_dir = trained(folder, args, "oos")
    return folder, run, run_dir


def test_the_run_logs_every_detector_and_exports_the_chosen_one(detected):
    _, run, run_dir = detected
    metrics = json.loads((run_dir / "test_metrics.json").read_text())
    for kind in (*outofscope.KINDS, "detect"):
        for name in ("in_scope_acc", "recall", "precision", "auroc"):
            assert 0.0 <= metrics[f"test/oos_{kind}_{name}"] <= 1.0
            assert f"test/oos_{kind}_{name}" in run.data.metrics
    assert metrics["test/oos_detect_auroc"] == metrics["test/oos_mahalanobis_auroc"]
    saved = json.loads((run_dir / "export" / "out_of_scope.json").read_text())
    assert (saved["kind"], saved["label"]) == ("mahalanobis", "refund")
    assert (run_dir / "export" / "out_of_scope.safetensors").is_file()


def test_every_way_of_predicting_answers_out_of_scope_alike(detected, tmp_path: Path):
    import mlflow
    import pandas as pd

    from tunelab.serving.predict import load_predictor

    folder, run, run_dir = detected
    predictor = load_predictor(str(run_dir), None)
    rows = [{"text": t} for t in TEXTS]
    detector = outofscope.read_detector(run_dir / "export")
    detector.threshold = -1.0  # every row is now out of scope
    predictor.out_of_scope = detector
    assert {r["label"] for r in predictor.predict(rows)} == {"refund"}

    predictor = load_predictor(str(run_dir), None)  # the saved threshold, as shipped
    expected = [r["label"] for r in predictor.predict(rows)]
    mlflow.set_tracking_uri(f"sqlite:///{folder}/mlflow.db")
    served = mlflow.pyfunc.load_model(f"runs:/{run.info.run_id}/model")
    assert list(served.predict(pd.DataFrame(rows))["label"]) == expected
    assert served.unwrap_python_model().predictor.out_of_scope.kind == "mahalanobis"


def test_auroc_ranks_raw_scores_of_any_scale():
    is_oos = torch.tensor([False, False, True, True])
    assert outofscope.auroc(torch.tensor([100.0, 200.0, 300.0, 400.0]), is_oos) == 1.0
    assert outofscope.auroc(torch.tensor([1e3, 3e3, 2e3, 4e3]), is_oos) == 0.75
    assert outofscope.auroc(torch.tensor([5.0, 5.0, 5.0, 5.0]), is_oos) == 0.5


@pytest.mark.slow  # over 10 s: the default run stays under 10 minutes
def test_an_onnx_export_carries_an_msp_detector_and_refuses_mahalanobis(detected, tmp_path, capsys):
    import shutil

    import export as export_cli
    from tunelab.serving.predict import load_predictor

    _, _, run_dir = detected
    shutil.copytree(run_dir, tmp_path / "run")  # a run folder: its config names the test rows
    source = tmp_path / "run" / "export"
    args = [f"source={tmp_path / 'run'}", "format=onnx", "check_rows=24", "log_model=false"]
    assert export_cli.main([*args, f"output={tmp_path / 'refused'}"]) == 1
    assert "detector is `mahalanobis`" in capsys.readouterr().err

    detector = outofscope.read_detector(source)
    detector.kind, detector.means, detector.precision = "msp", None, None
    detector.threshold = 0.5
    detector.save(source)
    assert export_cli.main([*args, f"output={tmp_path / 'onnx'}"]) == 0
    assert outofscope.read_detector(tmp_path / "onnx").kind == "msp"
    rows = [{"text": t} for t in TEXTS]
    onnx = load_predictor(str(tmp_path / "onnx"), None).predict(rows)
    torch_model = load_predictor(str(source), None).predict(rows)
    assert [r["label"] for r in onnx] == [r["label"] for r in torch_model]
