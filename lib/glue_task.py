"""A GLUE task as prepare_glue wrote it (data/bin/glue/<task>/): what its meta.json records, and its classes in
the classifier's output order."""
import json
from pathlib import Path

GLUE_DATA = Path("data/bin/glue")  # prepare_glue's output, one directory per task


def glue_meta(task: str) -> dict:
    """What prepare_glue recorded of a task (data/bin/glue/<task>/meta.json): classes or regression, labels,
    label range, pair or single sentence, fairseq's split names."""
    return json.loads((GLUE_DATA / task / "meta.json").read_text())


def class_labels(task: str) -> list[str]:
    """Labels in the classifier's output order: fairseq-preprocess's label dictionary (sorted by
    frequency, so not the order of the task's own label list), without fairseq's padding symbols."""
    lines = (GLUE_DATA / task / "label" / "dict.txt").read_text().splitlines()
    return [line.split()[0] for line in lines if not line.startswith("madeupword")]


def label_names(task: str, names: list[str] | None) -> dict:
    """{label: name} from the catalog's `label_names` of the task (datasets.<task>.label_names, in the order of its
    labels); empty where it gives none, a label then naming itself."""
    return dict(zip(glue_meta(task)["labels"], names or [])) if names else {}
