"""The schema of datasets.yaml, the dataset catalog: where each dataset's files come from (URL and
checksum), how its splits are read, and for a GLUE task its columns, labels and metrics."""
import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# GLUE metrics by kind of task (stages/evaluate.py computes each)
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("pearson", "spearman")


URL = Annotated[str, Field(pattern=r"^(https?|file)://")]


class FileSpec(Strict):
    # one URL, or several tried in order (mirrors of the same bytes: each download is checked against the
    # one checksum below, and a failure or a mismatch moves on to the next)
    url: URL | Annotated[list[URL], Field(min_length=1)]
    # sha256 is the rule; md5 only where no public sha256 exists (recorded upstream by sacrebleu).
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")
    md5: str | None = Field(default=None, pattern=r"^[0-9a-f]{32}$")

    @model_validator(mode="after")
    def _one_checksum(self):
        if (self.sha256 is None) == (self.md5 is None):
            raise ValueError("give exactly one of sha256 (preferred) or md5")
        return self

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)


class Source(Strict):
    file: str                           # a key of the dataset's `files` (may contain {lang})
    # path inside a zip/tar archive; may contain {lang}, or map each language to its own member
    member: str | dict[str, str] | None = None
    cleanup: Literal["fastai_csv"] | None = None


class Dataset(Strict):
    kind: Literal["corpus", "glue", "parallel"]
    files: dict[str, FileSpec] = Field(min_length=1)
    splits: dict[str, list[Source]] = Field(min_length=1)
    # glue only
    header: bool | None = None
    columns: dict[Literal["sentence1", "sentence2", "label"], str | int] | None = None
    labels: list[str] | Literal["regression"] | None = None
    label_range: tuple[float, float] | None = None   # regression only: the lowest and highest label
    # classification, optional: what each label means, in the order of `labels` (the exported classifiers'
    # id2label, the predictions files); without it the labels name themselves
    label_names: list[str] | None = None
    # what evaluate scores, in this order (the first is the task's headline metric); f1 counts the
    # second of two labels as the positive class
    metrics: list[Literal[CLASSIFICATION_METRICS + REGRESSION_METRICS]] | None = None
    # parallel only
    languages: list[str] | None = None

    @model_validator(mode="after")
    def _kind_fields(self):
        glue_fields = {"header": self.header, "columns": self.columns, "labels": self.labels,
                       "metrics": self.metrics}
        if self.kind == "glue":
            missing = [k for k, v in glue_fields.items() if v is None]
            if missing:
                raise ValueError(f"kind 'glue' needs {missing}")
            self._check_labels_and_metrics()
            if not {"sentence1", "label"} <= set(self.columns):
                raise ValueError("glue columns need at least sentence1 and label")
            want = str if self.header else int
            bad = [k for k, v in self.columns.items() if not isinstance(v, want)]
            if bad:
                raise ValueError(f"columns {bad} must be {'header names' if self.header else '0-based field numbers'}"
                                 f" because header is {self.header}")
            if "train" not in self.splits or len(self.splits) < 2:
                raise ValueError("glue splits need 'train' and at least one dev split")
        elif any(v is not None for v in [*glue_fields.values(), self.label_range, self.label_names]):
            raise ValueError(f"header/columns/labels/label_range/label_names/metrics are for kind 'glue', "
                             f"not '{self.kind}'")
        if self.kind == "parallel" and not self.languages:
            raise ValueError("kind 'parallel' needs languages")
        if self.kind != "parallel" and self.languages is not None:
            raise ValueError("languages are for kind 'parallel'")
        if self.kind in ("corpus", "parallel") and not {"train", "valid", "test"} <= set(self.splits):
            raise ValueError(f"kind '{self.kind}' needs splits train, valid and test")
        langs = self.languages or [None]
        for split, sources in self.splits.items():
            for src in sources:
                if isinstance(src.member, dict) and set(src.member) != set(self.languages or []):
                    raise ValueError(f"splits.{split}: member maps languages {sorted(src.member)}, "
                                     f"expected {self.languages}")
                for lang in langs:
                    name = src.file.format(lang=lang) if lang else src.file
                    if name not in self.files:
                        raise ValueError(f"splits.{split}: file '{name}' is not in files {sorted(self.files)}")
        return self

    def _check_labels_and_metrics(self):
        if len(set(self.metrics)) != len(self.metrics) or not self.metrics:
            raise ValueError(f"metrics: give each metric once, at least one: {self.metrics}")
        if self.labels == "regression":
            if self.label_range is None:
                raise ValueError("a regression task needs label_range: [lowest, highest] label")
            if self.label_names is not None:
                raise ValueError("label_names are for classification tasks; a regression task has no classes")
            low, high = self.label_range
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise ValueError(f"label_range {list(self.label_range)}: needs two finite numbers, lowest first")
            allowed = REGRESSION_METRICS
        else:
            if self.label_range is not None:
                raise ValueError("label_range is for regression tasks (labels: regression)")
            if self.label_names is not None and (len(self.label_names) != len(self.labels)
                                                 or len(set(self.label_names)) != len(self.label_names)):
                raise ValueError(f"label_names {self.label_names}: one distinct name for each of labels {self.labels}")
            if len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
                raise ValueError(f"labels: give at least two, each once: {self.labels}")
            if len(self.labels) != 2 and {"f1", "mcc"} & set(self.metrics):
                raise ValueError(f"metrics f1 and mcc score two classes; labels has {len(self.labels)}")
            allowed = CLASSIFICATION_METRICS
        wrong = [m for m in self.metrics if m not in allowed]
        if wrong:
            kind = "a regression" if self.labels == "regression" else "a classification"
            raise ValueError(f"metrics {wrong} do not score {kind} task; choose from {list(allowed)}")
