"""evaluate: every variant of one compressed model, measured the same way, in one process.

GLUE: the metrics the task's catalog entry declares (`datasets.<task>.metrics`: accuracy, F1, MCC;
Pearson, Spearman for regression), in that order, on each dev split, with a 95% bootstrap confidence
interval; a classifier also gets accuracy and the dev loss. Translation: sacrebleu BLEU and chrF
(signatures recorded) on the detokenized test set with beam search. Each row also carries `constant_score`:
the best score of a predictor that ignores its input (always the same class; for the loss, the dev label
frequencies; for BLEU and chrF, the same sentence for every source; 0 for a correlation) on the same
examples, so a model at that level is seen to have learned nothing. fairseq variants run in PyTorch, ONNX
variants in ONNX Runtime on raw text, never by reloading PyTorch weights. Size columns come from variant.json.

Scoring and timing are separate passes. Every fairseq variant is scored on `evaluate.device` (a GPU where
there is one, in batches), the ONNX models in ONNX Runtime on the CPU with `evaluate.scoring_threads` (auto:
every core); each row records the device that scored it. The deployment formats, PyTorch fp32 of the dense
model and the ONNX models, are then timed on the CPU on `evaluate.threads` threads: throughput at
`evaluate.batch_size` over the first `evaluate.throughput_examples` examples after a warm-up, batch-1 latency
the median of `evaluate.repeats` runs over the first `evaluate.latency_examples`. A pruned or simulated k-bit
model runs the same dense kernels as its format's dense one, so only the dense ones are timed.

Writes reports/eval/<model>.csv, one row per (variant, split, metric), and each variant's output for every
example to reports/predictions/<model>/<variant>.tsv (lib/predictions.py: the layout).

Usage: python -m stages.evaluate glue SIZE TASK [--random-init]
       python -m stages.evaluate mt SIZE
"""
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from lib import hardware
from lib.checkpoints import allow_checkpoint_globals
from lib.devices import device_name, evaluation_device
from lib.errors import StageError, log, summary
from lib.glue import read_tsv, regression_target
from lib.glue_task import class_labels, glue_meta, label_names as named_labels
from lib.inference import by_length, cpu_speed, load_onnx, onnx_timing_model, scoring_threads, speed
from lib.metrics import CLASSIFICATION_METRICS, REGRESSION_METRICS, bootstrap, constant_classification, cross_entropy, f1
from lib.onnx_export import quantization_columns
from lib.params import load_params
from lib.predictions import fresh_dir, glue_predictions, write_predictions
from lib.stage import run_stage
from lib.translation_eval import TranslationEval
from lib.variant_weights import load_variant
from lib.variants import COMPRESSED_DIR, DENSE, EVAL_FIELDS, VARIANT_FILE, is_onnx, model_arg

def main(argv):
    params = load_params()
    cfg = params.evaluate
    name, size_name, task, size, source = model_arg(argv, params, "evaluate")
    root = COMPRESSED_DIR / name
    variants = sorted(d for d in root.iterdir() if (d / VARIANT_FILE).exists()) if root.is_dir() else []
    if not variants:
        raise StageError(f"{root}: no variants (run `dvc repro compress_{'mt' if task == 'translation' else 'glue'}` "
                         "first)")
    torch.set_num_threads(scoring_threads(cfg.scoring_threads))  # timings switch to cfg.threads
    # trained fp32 weights hold denormal floats, which x86 CPUs compute ~100x slower (seen: 2 s per
    # sentence); flushing them to zero changes no prediction and is what inference runtimes do
    torch.set_flush_denormal(True)
    device = evaluation_device(cfg.device)
    try:
        evaluator = TranslationEval(cfg, params.data.translation, device) if task == "translation" else \
            GlueEval(cfg, task, params.datasets[task].metrics, params.datasets[task].label_names, device)
        kept = fresh_dir(name)
        rows, speeds = [], {}  # format -> (variant, its speed): a pruned ONNX model runs its format's dense kernels
        for i, variant in enumerate(variants, 1):
            described = json.loads((variant / VARIANT_FILE).read_text())
            started = time.time()
            onnx, timed_as = is_onnx(described["format"]), speeds.get(described["format"])
            results, timing = evaluator.onnx(variant, timed_as) if onnx else evaluator.fairseq(variant, described)
            write_predictions(kept / f"{variant.name}.tsv", evaluator.predicted)
            timing_s = timing.pop("timing_s") if timing else 0.0
            if onnx:
                speeds.setdefault(described["format"], (variant.name, timing))
            reused = f"speed timed on {timed_as[0]} (the same kernels)" if timed_as else ""
            scheme, agreement, elsewhere = quantization_columns(described.get("quantization", {}))
            for split, examples, metric, value, low, high, details in results:
                constant = evaluator.constant_score(split, metric)
                rows.append({
                    **{k: described[k] for k in ("task", "size", "layers", "hidden", "format", "target_sparsity",
                                                 "sparsity", "bits", "parameters", "nonzero_parameters", "bytes",
                                                 "bytes_zip")},
                    "init": described.get("init", "pretrained"),
                    "model": name, "variant": variant.name, "split": split, "examples": examples,
                    "bits_per_weight": round(8 * described["bytes"] / described["parameters"], 3),
                    "metric": metric, "value": round(value, 4), "ci_low": round(low, 4), "ci_high": round(high, 4),
                    "constant_score": "" if constant is None else round(constant, 4),
                    **(timing or {}), "threads": cfg.threads, "device": device_name(evaluator.scored_on),
                    "hardware": hardware.cpu(),
                    "quantization": scheme, "agreement": agreement,
                    "details": "; ".join(filter(None, [details, reused, elsewhere]))})
            log(f"evaluate {name}: [{i}/{len(variants)}] {variant.name}: "
                + ", ".join(f"{r[2]} {r[3]:.2f}" for r in results)
                + (f", {timing['latency_ms']} ms at batch 1" if timing else "")
                + f" ({time.time() - started:.1f} s, timing {timing_s:.2f} s)")
    finally:  # a process-wide switch; tests run several stages in one process
        torch.set_flush_denormal(False)
    out = Path("reports/eval") / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, EVAL_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    dense = next((r for r in rows if r["variant"] == DENSE), rows[0])
    summary(f"evaluate {name}", f"{len(variants)} variants ({len(rows)} rows) in {out}",
            f"dense {dense['split']} {dense['metric']} {dense['value']:.2f}")


class GlueEval:
    def __init__(self, cfg, task: str, metrics: list[str], label_names: list[str] | None = None,
                 device: str = "cpu"):
        self.cfg, self.task, self.device, self.scored_on = cfg, task, device, "cpu"
        self.scoring_threads = scoring_threads(cfg.scoring_threads)
        self.data = Path("data/bin/glue") / task
        self.meta = glue_meta(task)
        self.names = named_labels(task, label_names)  # the catalog's label -> name
        self.model = self.fairseq_task = None
        self.constants, self.predicted = {}, []  # predicted: the last variant's output for every example
        if self.meta["regression"]:
            self.classes, self.metrics = [], {m: REGRESSION_METRICS[m] for m in metrics}
            return
        # the classifier's output order is fairseq's label dictionary (by frequency), so F1's positive
        # class, the task's second label, need not be output 1
        self.classes = class_labels(task)
        positive = self.classes.index(self.meta["labels"][1])
        scorers = {**CLASSIFICATION_METRICS, "f1": lambda g, p: f1(g, p, positive)}
        # accuracy too, comparable across tasks, where the catalog names another metric
        self.metrics = {m: scorers[m] for m in dict.fromkeys([*metrics, "accuracy"])}

    def splits(self):
        """(fairseq split, our split name, raw rows) of every dev split, capped."""
        for fairseq_split, split in self.meta["fairseq_splits"].items():
            if fairseq_split == "train":
                continue
            rows = read_tsv(self.data / f"{split}.tsv", self.meta)
            yield fairseq_split, split, rows[: self.cfg.max_dev_examples or len(rows)]

    def score(self, gold, logits):
        """(metric, value, low, high): the task's metrics and, for a classifier, the dev cross-entropy,
        which moves before accuracy does on small dev sets."""
        if self.meta["regression"]:
            return [(m, *bootstrap(score, gold, logits[:, 0], self.cfg.bootstrap)) for m, score in self.metrics.items()]
        scores = [(m, *bootstrap(lambda g, x, score=score: score(g, x.argmax(-1)), gold, logits, self.cfg.bootstrap))
                  for m, score in self.metrics.items()]
        return scores + [("loss", *bootstrap(cross_entropy, gold, logits, self.cfg.bootstrap))]

    def split_results(self, split: str, rows: list[dict], gold, logits) -> list[tuple]:
        """The scores on one split, as result rows; keeps each example's prediction in self.predicted."""
        self.predicted += glue_predictions(split, rows, logits, self.classes, self.names, self.meta)
        return [(split, len(rows), *score, "") for score in self.score(gold, logits)]

    def constant_score(self, split: str, metric: str):
        """The best `metric` of an input-ignoring predictor on `split`'s evaluated examples: the best single
        class (accuracy, F1, MCC), the dev label frequencies (loss: their entropy), 0 for a correlation."""
        if self.meta["regression"]:
            return 0.0
        if (split, metric) not in self.constants:  # the same for every variant: computed once
            rows = next(rows for _, name, rows in self.splits() if name == split)
            gold = np.array([self.classes.index(r["label"]) for r in rows])
            self.constants[split, metric] = constant_classification(gold, self.metrics.get(metric), len(self.classes))
        return self.constants[split, metric]

    def fairseq(self, variant: Path, described: dict):
        from fairseq import checkpoint_utils
        checkpoint = load_variant(variant)
        if self.model is None:  # built once; each variant only swaps the weights
            allow_checkpoint_globals()
            models, _, self.fairseq_task = checkpoint_utils.load_model_ensemble_and_task(
                [described["source"]], arg_overrides={"data": str(self.data)})
            self.model = models[0].eval()
        self.model.load_state_dict(checkpoint["model"])
        self.scored_on = self.device
        self.model.to(self.device)
        results, self.predicted = [], []
        for fairseq_split, split, rows in self.splits():
            self.fairseq_task.load_dataset(fairseq_split)
            dataset = self.fairseq_task.dataset(fairseq_split)
            samples = [dataset[i] for i in range(len(rows))]
            with torch.no_grad():
                logits = by_length(lambda batch: self.classify(dataset.collater(batch)["net_input"]["src_tokens"]),
                                   samples, lambda sample: len(sample["net_input.src_tokens"]), self.cfg.batch_size)
            logits = torch.stack(logits)
            # a class index, or for regression fairseq's list of (scaled) targets
            gold = torch.cat([torch.as_tensor(sample["target"]).view(-1) for sample in samples])
            results += self.split_results(split, rows, gold.numpy(), logits.numpy())
        if variant.name != DENSE:  # the deployment format is timed; the others share its kernels (module docstring)
            return results, None
        tokens = [sample["net_input.src_tokens"] for sample in samples]
        pad = self.fairseq_task.source_dictionary.pad()

        def run(batch):
            with torch.no_grad():
                return self.classify(torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=pad))
        return results, cpu_speed(self.model, run, tokens, len, self.cfg, "sentences/s")

    def classify(self, src_tokens):
        on = next(self.model.parameters()).device
        return self.model(src_tokens.to(on), features_only=True,
                          classification_head_name="sentence_classification_head")[0].float().cpu()

    def onnx(self, variant: Path, timed_as):
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import AutoTokenizer
        model = load_onnx(ORTModelForSequenceClassification, variant, self.scoring_threads)
        self.scored_on = "cpu"
        tokenizer = AutoTokenizer.from_pretrained(variant)
        # the exported config names each output by the catalog's label_names (else the label itself)
        expected, named = [self.names.get(c, c) for c in self.classes], model.config.id2label
        if not self.meta["regression"] and [named.get(i) for i in range(len(named))] != expected:
            raise StageError(f"{variant}: its classes {model.config.id2label} are not {expected}, the labels of "
                             f"{self.data}/label/dict.txt {self.classes} in that order named by the catalog's "
                             "label_names; export it again (dvc repro -f compress_glue)")
        columns = ["sentence1", "sentence2"] if self.meta["pair"] else ["sentence1"]

        def run(batch):
            encoded = tokenizer(*[list(c) for c in zip(*batch)], padding=True, truncation=True,
                                return_tensors="np")
            return model(**encoded).logits

        results, self.predicted = [], []
        for _, split, rows in self.splits():
            texts = [tuple(r[c] for c in columns) for r in rows]
            logits = np.stack(by_length(lambda batch: np.asarray(run(batch)), texts, len_text, self.cfg.batch_size))
            gold = np.array([regression_target(r["label"], self.meta["label_range"]) for r in rows]
                            if self.meta["regression"] else [self.classes.index(r["label"]) for r in rows])
            results += self.split_results(split, rows, gold, logits)
        if timed_as is None:
            model = onnx_timing_model(ORTModelForSequenceClassification, variant, model, self.scoring_threads,
                                      self.cfg.threads)
        return results, speed(run, texts, len_text, self.cfg, "sentences/s", timed_as)


def len_text(text: tuple) -> int:
    """An example's length in characters, all its sentences: what by_length sorts raw text by."""
    return sum(map(len, text))


if __name__ == "__main__":
    run_stage(main)
