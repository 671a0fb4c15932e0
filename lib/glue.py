"""GLUE rows: parsing and checking a task's TSV, one row at a time. fetch reads the catalog's source
files with it and prepare_glue reads fetch's normalized data/raw/<task>/ files with it again (they may
have been edited by hand since), so both apply the same checks and name a bad row by file and line."""
import math
from pathlib import Path

from lib.errors import DataError
from lib.files import iter_lines


def normalized_fields(pair: bool) -> list[str]:
    """The columns of fetch's normalized TSVs, in order (also their header)."""
    return ["sentence1", "sentence2", "label"] if pair else ["sentence1", "label"]


def glue_rows(lines, columns: dict, header: bool, labels, label_range=None):
    """Parse (where, line_number, text) lines of one GLUE TSV into {sentence1[, sentence2], label} dicts,
    checking every row. `columns` maps each field to its header name (header) or 0-based field number;
    `labels` and `label_range` are the catalog's (label_range: regression only)."""
    index, width = (None, None) if header else (dict(columns), None)
    for where, number, line in lines:
        cells = line.split("\t")
        if index is None:  # the header row
            missing = [c for c in columns.values() if c not in cells]
            if missing:
                raise DataError(where, f"header has no column {missing}; it has {cells}", number)
            index = {k: cells.index(c) for k, c in columns.items()}
            width = len(cells)
            continue
        if not line.strip():
            if "\t" in line:  # not a blank line but a row whose fields are all empty
                raise DataError(where, "row of empty fields (only tabs and spaces)", number)
            continue
        if (width is not None and len(cells) != width) or len(cells) <= max(index.values()):
            expected = width if width is not None else f"at least {max(index.values()) + 1}"
            raise DataError(where, f"malformed row: expected {expected} tab-separated fields, found {len(cells)}",
                            number)
        row = {k: cells[i].strip() for k, i in index.items()}
        check_label(labels, label_range, row["label"], where, number)
        yield row


def check_label(labels, label_range, label: str, where, number) -> None:
    if labels != "regression":
        if label not in labels:
            raise DataError(where, f"label '{label}' is not one of the task's labels {labels}", number)
        return
    try:
        value = float(label)
    except ValueError:
        raise DataError(where, f"label '{label}' is not a number (regression task)", number)
    if not math.isfinite(value):  # float() takes 'nan' and 'inf', and reads 1e400 as inf
        raise DataError(where, f"label '{label}' is not a finite number (regression task)", number)
    low, high = label_range
    if not low <= value <= high:
        raise DataError(where, f"label '{label}' is outside the task's label_range [{low:g}, {high:g}]", number)


def regression_target(label: str, label_range) -> float:
    """A regression label scaled to [0, 1] by the task's label_range, as fairseq's RoBERTa GLUE recipe
    scales STS-B's 0-5 scores."""
    low, high = label_range
    return (float(label) - low) / (high - low)


def read_tsv(path: Path, meta: dict) -> list[dict]:
    """Every row of a (dev) TSV normalized by fetch: iter_tsv's rows as a list."""
    return list(iter_tsv(path, meta))


def iter_tsv(path: Path, meta: dict):
    """The rows of a TSV normalized by fetch (no quoting: fields never hold tabs or newlines), checked as
    fetch checked them, streamed; `meta`: the task's meta.json."""
    fields = normalized_fields(meta["pair"])
    lines = ((path, number, line) for number, line in enumerate(iter_lines(path), start=1))
    return glue_rows(lines, {f: f for f in fields}, True, meta["labels"], meta["label_range"])

