"""CLINC150 (Larson et al. 2019): 150 intents in 10 domains, plus out-of-scope queries."""

from __future__ import annotations

import json
from typing import Any

from pydantic import field_validator

from datamodules.families import ClassificationData
from tunelab.base.errors import DataError

DOMAINS = (
    "auto_and_commute",
    "banking",
    "credit_cards",
    "home",
    "kitchen_and_dining",
    "meta",
    "small_talk",
    "travel",
    "utility",
    "work",
)
OOS = "oos"
SOURCE_SPLITS = {"train": "train", "validation": "val", "test": "test"}


class Clinc150(ClassificationData):
    """CLINC150 "full" from a local copy of `data_full.json` and `domains.json` (clinc/oos-eval).

    The official splits (100 / 20 / 30 queries per intent) are used as they are. By default only
    the 150 in-scope intents are kept (15,000 / 3,000 / 4,500 rows). `include_oos` adds the
    out-of-scope queries of `oos_train` / `oos_val` / `oos_test` (100 / 100 / 1,000) as a 151st
    class `oos`, the "oos-train" protocol of Larson et al.; accuracy on the in-scope test queries
    and recall on `oos` are then the paper's two numbers. Class names are the sorted intent names,
    then `oos` last.

    Attributes:
        root: the data root (`TUNELAB_DATA_DIR`).
        path: the folder holding `data_full.json` and `domains.json`, under `root` if relative.
        include_oos: add the out-of-scope class `oos` and its queries to every split.
        domains: keep only the intents of these domains (all 10 when null); the `oos` queries
            stay when `include_oos` is set.
    """

    root: str = "data"
    path: str = "clinc150"
    include_oos: bool = False
    domains: list[str] | None = None

    @field_validator("domains")
    @classmethod
    def _known_domains(cls, domains: list[str] | None) -> list[str] | None:
        if domains is not None:
            unknown = [d for d in domains if d not in DOMAINS]
            if unknown or not domains:
                raise ValueError(
                    f"unknown domain(s) {unknown or '[] (empty list)'}; "
                    f"valid domains: {', '.join(DOMAINS)}"
                )
        return domains

    def out_of_scope_label(self) -> str | None:
        """`oos` when the out-of-scope queries are included."""
        return OOS if self.include_oos else None

    def _read(self) -> tuple[dict[str, list[list[str]]], dict[str, list[str]]]:
        """The parsed `data_full.json` and `domains.json`."""
        from datamodules import common

        folder = common.require_local(self.path, self.root)
        try:
            data = json.loads((folder / "data_full.json").read_text())
            domains = json.loads((folder / "domains.json").read_text())
        except FileNotFoundError as err:
            raise DataError(
                f"CLINC150 files missing in {folder}: need data_full.json and domains.json "
                "(https://github.com/clinc/oos-eval, folder data/)"
            ) from err
        return data, domains

    def intents(self, domains: dict[str, list[str]]) -> list[str]:
        """The class names: the chosen domains' intents, sorted, then `oos` if included."""
        chosen = self.domains or sorted(domains)
        names = sorted(intent for domain in chosen for intent in domains[domain])
        return [*names, OOS] if self.include_oos else names

    def load(self, seed: int) -> tuple[Any, list[str] | None]:
        """The official splits (columns `text`, `label`), in-scope rows first, then `oos`."""
        from datasets import Dataset, DatasetDict

        data, domains = self._read()
        names = self.intents(domains)
        kept = set(names)
        splits = {}
        for split, key in SOURCE_SPLITS.items():
            pairs = [p for p in data[key] if p[1] in kept]
            if self.include_oos:
                pairs += data[f"oos_{key}"]
            texts, labels = zip(*pairs, strict=True) if pairs else ((), ())
            splits[split] = Dataset.from_dict({"text": list(texts), "label": list(labels)})
        return DatasetDict(splits), names
