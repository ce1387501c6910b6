"""The audit inside a run: `data.audit` reports, `data.drop_*` clean train, never silently.

A data family's datamodule calls `prepare` while it prepares its splits (the result is cached
with them, see `datamodules.prepared`), removes the train rows it returns, then calls `announce`
after setup and `log_to_run` each time it is set up with a trainer: the report and the list of
removed rows go to the run's MLflow run as artifacts under `audit/`, the counts as metrics.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from tunelab.base.audit import duplicates, findings, report
from tunelab.base.audit.config import AuditConfig
from tunelab.base.audit.table import View

log = logging.getLogger(__name__)

SETTINGS = ("duplicates", "leaked", "conflicts", "label_issues")  # data.drop_<name>


def _wanted(data: Any) -> list[str]:
    return [name for name in SETTINGS if getattr(data, f"drop_{name}", False)]


def needs_audit(data: Any) -> bool:
    """Whether `data` asks for the audit or for a cleaning setting (else: the leak count only)."""
    return bool(data.audit or _wanted(data))


def _removed(view: View, rows: list[int]) -> list[dict[str, Any]]:
    train = view.splits["train"]
    return [
        {
            "row": i,
            "source": train.rows[i],
            "text": findings.clip(train.texts[i]),
            "label": findings.clip(train.labels[i]),
        }
        for i in rows
    ]


def prepare(view: View, data: Any) -> tuple[set[int], dict[str, Any]]:
    """Audit `view` as `data`'s settings ask; the train rows to remove and the record to keep.

    Without `data.audit` or a `data.drop_*` setting only exact cross-split leaks are counted
    (cheap, for the warning line); the data is left as it is.

    Returns:
        The train positions to remove, and a JSON-able record for `announce` / `log_to_run`:
        `result` (the audit, when `data.audit`), `leaks` (validation/test rows found in train)
        and `removed` (per setting, the rows it removed).
    """
    wanted = _wanted(data)
    if not needs_audit(data):
        leaks = sum(map(len, duplicates.exact_leaks(view).values()))
        return set(), {"result": None, "leaks": leaks, "removed": {}}
    settings = AuditConfig()
    result = findings.audit(view, settings, data.audit or "label_issues" in wanted)
    removed = {name: _removed(view, result["remove"][name]) for name in wanted}
    drop = {row["row"] for rows in removed.values() for row in rows}
    record = {"result": result if data.audit else None, "leaks": result["cross_split_leaks"]}
    return drop, record | {"removed": removed, "kept_train": len(view.splits["train"]) - len(drop)}


def announce(record: dict[str, Any] | None, data: Any) -> None:
    """Warn about leaks (unless dropped) and say what each cleaning setting removed."""
    if not record:  # a datamodule that does not audit
        return
    if record["leaks"] and "leaked" not in record["removed"]:
        log.warning(
            "data %s: %d validation/test rows also appear in train, so their scores overstate; "
            "see python audit.py, or remove them from train with data.drop_leaked=true",
            data.name,
            record["leaks"],
        )
    for name, rows in record["removed"].items():
        log.warning("data.drop_%s=true removed %d train rows (audit/removed.json)", name, len(rows))


def log_to_run(datamodule: Any) -> None:
    """Write the report and the removed rows into the run folder and log them to MLflow, once.

    Does nothing before a trainer is attached, off rank zero, or without an MLflow logger.
    """
    trainer, record = getattr(datamodule, "trainer", None), getattr(datamodule, "audit", None)
    logger = getattr(trainer, "logger", None)
    if not record or getattr(datamodule, "audit_logged", False) or not hasattr(logger, "run_id"):
        return
    datamodule.audit_logged = True
    if not trainer.is_global_zero or (record["result"] is None and not record["removed"]):
        return
    folder = Path(trainer.default_root_dir) / "audit"
    folder.mkdir(parents=True, exist_ok=True)
    if record["result"] is not None:
        report.write(record["result"], folder)
    if record["removed"]:
        (folder / "removed.json").write_text(
            json.dumps(record["removed"], indent=1, ensure_ascii=False)
        )
    logger.experiment.log_artifacts(logger.run_id, str(folder), artifact_path="audit")
    metrics = {f"data/removed_{name}": len(rows) for name, rows in record["removed"].items()}
    logger.log_metrics(metrics | {"data/cross_split_leaks": record["leaks"]}, step=0)
