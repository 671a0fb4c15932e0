"""Every evaluated example's output, kept: reports/predictions/<model>/<variant>.tsv. stages/evaluate.py writes
them, stages/report.py reads them for the examples where a recommended variant and its dense model disagree.

One row per evaluated example, a header line, tab-separated (the csv module quotes a field that holds a tab,
a quote or a line break). GLUE: `split` and `index` (the example's row in that dev split, from 0), its
`sentence1` [and `sentence2`], `gold` (the catalog's label, or its name where the catalog gives `label_names`;
the score for regression), `predicted` (label, name or score) and `probability` (the softmax of the predicted
class; empty for regression). Translation: `index`, `source`, `reference`, `hypothesis` (detokenized)."""
import csv
import shutil
from pathlib import Path

import numpy as np

PREDICTIONS_DIR = Path("reports/predictions")
EXAMPLES = 5  # disagreements the report shows per recommended variant


def fresh_dir(model: str) -> Path:
    """reports/predictions/<model>/, emptied: a variant compressed away leaves no stale file behind."""
    directory = PREDICTIONS_DIR / model
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def write_predictions(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]) if rows else [], delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_predictions(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def glue_predictions(split: str, rows: list[dict], logits: np.ndarray, classes: list[str], names: dict,
                     meta: dict) -> list[dict]:
    """The rows of one dev split's examples. `logits`: the model's outputs, in `classes` order (fairseq's label
    dictionary) for a classifier, one scaled score (fairseq's [0, 1] target) for regression; `names`: the
    catalog's label -> name (empty: the labels themselves)."""
    texts = [c for c in ("sentence1", "sentence2") if c in rows[0]] if rows else []
    logits = np.asarray(logits, dtype=np.float64)
    if meta["regression"]:
        low, high = meta["label_range"]
        predicted = [f"{low + x * (high - low):.4f}" for x in logits[:, 0]]
        probability = [""] * len(rows)
    else:
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        probs = shifted / shifted.sum(-1, keepdims=True)
        predicted = [names.get(classes[k], classes[k]) for k in probs.argmax(-1)]
        probability = [f"{p:.4f}" for p in probs.max(-1)]
    return [{"split": split, "index": i, **{c: r[c] for c in texts},
             "gold": r["label"] if meta["regression"] else names.get(r["label"], r["label"]),
             "predicted": predicted[i], "probability": probability[i]} for i, r in enumerate(rows)]


def translation_predictions(sources: list[str], references: list[str], hypotheses: list[str]) -> list[dict]:
    return [{"index": i, "source": s, "reference": r, "hypothesis": h}
            for i, (s, r, h) in enumerate(zip(sources, references, hypotheses))]


def output(row: dict) -> str:
    """What a model answered for one example: its predicted label or score, or its translation."""
    return row["hypothesis"] if "hypothesis" in row else row["predicted"]


def disagreements(dense: list[dict], variant: list[dict], n: int = EXAMPLES) -> list[tuple[dict, dict, float]]:
    """Up to n (dense row, variant row, how far apart) of the examples where the two predict differently,
    deterministic: a classifier's first ones in file order; for regression the largest score differences;
    for translation the largest differences of sentence-level chrF against the reference."""
    pairs = [(d, v) for d, v in zip(dense, variant) if output(d) != output(v)]
    if pairs and "hypothesis" in pairs[0][0]:
        from sacrebleu.metrics import CHRF
        chrf = CHRF()
        scored = [(d, v, chrf.sentence_score(d["hypothesis"], [d["reference"]]).score
                   - chrf.sentence_score(v["hypothesis"], [v["reference"]]).score) for d, v in pairs]
        return sorted(scored, key=lambda x: (-abs(x[2]), int(x[0]["index"])))[:n]
    if pairs and not pairs[0][0]["probability"]:  # regression
        scored = [(d, v, float(v["predicted"]) - float(d["predicted"])) for d, v in pairs]
        return sorted(scored, key=lambda x: (-abs(x[2]), x[0]["split"], int(x[0]["index"])))[:n]
    return [(d, v, 0.0) for d, v in pairs[:n]]


def cell(text: str) -> str:
    """Text as one markdown table cell."""
    return " ".join(str(text).split()).replace("|", "\\|")


def disagreement_table(model: str, variant: str, dense_name: str, n: int = EXAMPLES) -> str:
    """The markdown of the examples where `variant` of `model` and its dense model `dense_name` disagree, read
    from their predictions files; a sentence saying why when there is nothing to show."""
    paths = [PREDICTIONS_DIR / model / f"{name}.tsv" for name in (dense_name, variant)]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        return f"No predictions to compare: {', '.join(missing)} missing (run `dvc repro` on the evaluate stages)."
    dense, other = map(read_predictions, paths)
    differing = sum(output(d) != output(v) for d, v in zip(dense, other))
    shown = disagreements(dense, other, n)
    head = f"{model} {variant} against {dense_name}: they differ on {differing} of {len(dense)} examples"
    if not shown:
        return head + "."
    if "hypothesis" in dense[0]:
        lines = ["| source | reference | dense | variant | chrF difference |", "|---|---|---|---|---|"]
        lines += [f"| {cell(d['source'])} | {cell(d['reference'])} | {cell(d['hypothesis'])} | "
                  f"{cell(v['hypothesis'])} | {-x:+.1f} |" for d, v, x in shown]
        note = "the largest differences of sentence chrF (variant minus dense)"
    else:
        texts = [c for c in ("sentence1", "sentence2") if c in dense[0]]
        lines = ["| example | " + " | ".join(texts) + " | gold | dense | variant |", "|---" * (len(texts) + 4) + "|"]
        lines += [f"| {d['split']} {d['index']} | " + " | ".join(cell(d[c]) for c in texts) + f" | {cell(d['gold'])} | "
                  + " | ".join(cell(r["predicted"]) + (f" ({float(r['probability']):.2f})" if r["probability"] else "")
                               for r in (d, v)) + " |" for d, v, _ in shown]
        note = "the largest score differences" if not dense[0]["probability"] else "the first ones"
    return f"{head}; {note}:\n\n" + "\n".join(lines)
