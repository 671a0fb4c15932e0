"""The pipeline's results as tables for the report: evaluated variants, learning curves with each size's
parameter count, precision and hardware, and the unigram baseline."""
import json
from pathlib import Path

import pandas as pd

from lib.errors import StageError
from lib.model_size import model_non_embedding_params

CURVES = Path("reports/curves")
UNIGRAM = Path("data/bin/mlm/unigram.json")
SUMMARIES = {"pretrain": Path("models/pretrain"), "train_mt": Path("models/mt")}  # <size>/summary.json


def read_variants(path: Path) -> pd.DataFrame:
    variants = pd.read_csv(path)
    if variants.empty:
        raise StageError(f"{path}: no rows (run `dvc repro tabulate`)")
    if "init" not in variants:  # written before the pretraining control existed: all pretrained
        variants["init"] = "pretrained"
    variants["init"] = variants["init"].fillna("pretrained")
    return variants


def read_curves(stage: str, sizes: list, grid: dict, kind: str) -> pd.DataFrame:
    """Every size's curve, with its non-embedding parameter count (`kind` "mlm" or "mt": the count
    the training stage uses) and the precision and hardware its summary.json records."""
    frames = []
    for name in sizes:
        path, summary = CURVES / f"{stage}-{name}.csv", SUMMARIES[stage] / name / "summary.json"
        for needed in (path, summary):
            if not needed.exists():
                raise StageError(f"{needed}: missing (run `dvc repro {stage}`)")
        info = json.loads(summary.read_text())
        size = grid[name]
        frames.append(pd.read_csv(path).assign(
            size=name, layers=size.layers, hidden=size.hidden, parameters=model_non_embedding_params(size, kind),
            # summaries from before these keys were recorded
            precision=info.get("precision", "unknown"), hardware=info.get("hardware", "unknown")))
    return pd.concat(frames, ignore_index=True)


def read_unigram() -> float:
    """Bits per token of the masked-LM valid set under an add-one unigram of the train counts."""
    if not UNIGRAM.exists():
        raise StageError(f"{UNIGRAM}: missing (run `dvc repro prepare_mlm`)")
    return float(json.loads(UNIGRAM.read_text())["valid_bits"])


def last_points(curves: pd.DataFrame) -> pd.DataFrame:
    """Each size's final curve row, smallest size first (tail, not last(): last() mixes rows)."""
    return curves.sort_values("updates").groupby("size").tail(1).sort_values("parameters")
