"""evaluate: every variant of one compressed model, measured the same way, in one process.

GLUE: the metrics the task's catalog entry declares (`datasets.<task>.metrics`: accuracy, F1, MCC;
Pearson, Spearman for regression), in that order, on each dev split, with a 95% bootstrap confidence
interval; a classifier also gets accuracy and the dev loss. Translation: sacrebleu BLEU (signature
recorded) on the detokenized test set with beam search. Each row also carries `constant_score`: the
best score of a predictor that ignores its input (always the same class; for the loss, the dev label
frequencies; for BLEU, the same sentence for every source; 0 for a correlation) on the same examples,
so a model at that level is seen to have learned nothing. fairseq variants run in PyTorch, ONNX variants in ONNX
Runtime on raw text, never by reloading PyTorch weights. Size columns come from variant.json. Speed
(batch-1 latency, throughput at `evaluate.batch_size`, median of `evaluate.repeats` runs after a
warm-up, `evaluate.threads` threads) is measured for the deployment formats: PyTorch fp32 of the dense
model and every ONNX fp32 / int8 model (a pruned or simulated k-bit PyTorch model runs the same dense
kernels as the dense one).

Writes reports/eval/<model>.csv, one row per (variant, split, metric).

Usage: python -m stages.evaluate glue SIZE TASK [--random-init]
       python -m stages.evaluate mt SIZE
"""
import csv
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from scipy.stats import rankdata

from stages import hardware
from stages.compress import VARIANT_FILE, class_labels, load_variant, model_arg
from stages.glue import regression_target
from stages.lib import StageError, allow_checkpoint_globals, load_params, log, read_lines, run_stage

FIELDS = ["model", "task", "size", "layers", "hidden", "init", "variant", "format", "target_sparsity", "sparsity", "bits",
          "parameters", "nonzero_parameters", "bits_per_weight", "bytes", "bytes_zip", "split", "examples",
          "metric", "value", "ci_low", "ci_high", "constant_score", "latency_ms", "throughput", "throughput_unit",
          "threads", "hardware", "details"]
CONSTANT_CANDIDATES = 100  # translation's constant baseline: sentences tried (each costs one corpus BLEU)


def main(argv):
    params = load_params()
    cfg = params.evaluate
    name, size_name, task, size, source = model_arg(argv, params, "evaluate")
    root = Path("models/compressed") / name
    variants = sorted(d for d in root.iterdir() if (d / VARIANT_FILE).exists()) if root.is_dir() else []
    if not variants:
        raise StageError(f"{root}: no variants (run `dvc repro compress_{'mt' if task == 'translation' else 'glue'}` "
                         "first)")
    torch.set_num_threads(cfg.threads)
    # trained fp32 weights hold denormal floats, which x86 CPUs compute ~100x slower (seen: 2 s per
    # sentence); flushing them to zero changes no prediction and is what inference runtimes do
    torch.set_flush_denormal(True)
    try:
        evaluator = TranslationEval(cfg, params.data.translation) if task == "translation" else \
            GlueEval(cfg, task, params.datasets[task].metrics)
        rows = []
        for i, variant in enumerate(variants, 1):
            described = json.loads((variant / VARIANT_FILE).read_text())
            started = time.time()
            onnx = described["format"].startswith("ONNX")
            results, timing = evaluator.onnx(variant) if onnx else evaluator.fairseq(variant, described)
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
                    **(timing or {}), "threads": cfg.threads, "hardware": hardware.cpu(), "details": details})
            log(f"evaluate {name}: [{i}/{len(variants)}] {variant.name}: "
                + ", ".join(f"{r[2]} {r[3]:.2f}" for r in results)
                + (f", {timing['latency_ms']} ms at batch 1" if timing else "") + f" ({time.time() - started:.1f} s)")
    finally:  # a process-wide switch; tests run several stages in one process
        torch.set_flush_denormal(False)
    out = Path("reports/eval") / f"{name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    log(f"wrote {out} ({len(rows)} rows)")


def bootstrap(metric, gold, predicted, resamples: int, seed: int = 0):
    """The metric and its 95% bootstrap interval over examples."""
    gold, predicted = np.asarray(gold), np.asarray(predicted)
    rng = np.random.default_rng(seed)
    samples = [metric(gold[i], predicted[i]) for i in rng.integers(0, len(gold), (resamples, len(gold)))]
    low, high = np.percentile(samples, [2.5, 97.5])
    return metric(gold, predicted), float(low), float(high)


def accuracy(gold, predicted):
    return 100.0 * float(np.mean(gold == predicted))


def f1(gold, predicted, positive: int = 1):  # of the positive class, as GLUE scores MRPC and QQP
    tp = np.sum((predicted == positive) & (gold == positive))
    return 100.0 * 2 * tp / max(np.sum(predicted == positive) + np.sum(gold == positive), 1)


def mcc(gold, predicted):
    tp, tn = np.sum((predicted == 1) & (gold == 1)), np.sum((predicted == 0) & (gold == 0))
    fp, fn = np.sum((predicted == 1) & (gold == 0)), np.sum((predicted == 0) & (gold == 1))
    denominator = np.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return 100.0 * float(tp * tn - fp * fn) / denominator if denominator else 0.0


def cross_entropy(gold, logits):  # nats per example
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.mean(log_probs[np.arange(len(gold)), gold]))


CLASSIFICATION_METRICS = {"accuracy": accuracy, "f1": f1, "mcc": mcc}


def pearson(gold, predicted):
    return 100.0 * float(np.corrcoef(gold, predicted)[0, 1]) if np.std(gold) and np.std(predicted) else 0.0


def spearman(gold, predicted):  # Pearson's r of the ranks; tied values share their mean rank
    return pearson(rankdata(gold), rankdata(predicted))


REGRESSION_METRICS = {"pearson": pearson, "spearman": spearman}


def by_length(run, items: list, length, batch_size: int) -> list:
    """`run(batch)` (one output per item) over batches of items of similar length, so little compute
    goes to padding; the outputs come back in the order of `items`."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    outputs = [None] * len(items)
    for lo in range(0, len(order), batch_size):
        chunk = order[lo: lo + batch_size]
        for i, output in zip(chunk, run([items[i] for i in chunk])):
            outputs[i] = output
    return outputs


def timed(run, batches: list, repeats: int) -> float:
    """Median seconds of running every batch in `batches`, after a warm-up call. One call is enough: the
    scoring pass before this has already run the model over every input."""
    run(batches[0])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for batch in batches:
            run(batch)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def speed(run, items: list, cfg, unit: str) -> dict:
    """Batch-1 latency over the first `latency_examples` items and throughput at batch_size."""
    single = [[x] for x in items[: cfg.latency_examples]]
    latency = timed(run, single, cfg.repeats) / len(single)
    batch = [items[: cfg.batch_size]]
    throughput = len(batch[0]) / timed(run, batch, cfg.repeats)
    return {"latency_ms": round(1000 * latency, 3), "throughput": round(throughput, 2), "throughput_unit": unit}


class GlueEval:
    def __init__(self, cfg, task: str, metrics: list[str]):
        self.cfg, self.task = cfg, task
        self.data = Path("data/bin/glue") / task
        self.meta = json.loads((self.data / "meta.json").read_text())
        self.model = self.fairseq_task = None
        self.constants = {}
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
            rows = read_tsv_rows(self.data / f"{split}.tsv")
            yield fairseq_split, split, rows[: self.cfg.max_dev_examples or len(rows)]

    def score(self, gold, logits):
        """(metric, value, low, high): the task's metrics and, for a classifier, the dev cross-entropy,
        which moves before accuracy does on small dev sets."""
        if self.meta["regression"]:
            return [(m, *bootstrap(score, gold, logits[:, 0], self.cfg.bootstrap)) for m, score in self.metrics.items()]
        scores = [(m, *bootstrap(lambda g, x, score=score: score(g, x.argmax(-1)), gold, logits, self.cfg.bootstrap))
                  for m, score in self.metrics.items()]
        return scores + [("loss", *bootstrap(cross_entropy, gold, logits, self.cfg.bootstrap))]

    def constant_score(self, split: str, metric: str):
        """The best `metric` of an input-ignoring predictor on `split`'s evaluated examples: the best single
        class (accuracy, F1, MCC), the dev label frequencies (loss: their entropy), 0 for a correlation."""
        if self.meta["regression"]:
            return 0.0
        if (split, metric) not in self.constants:  # the same for every variant: computed once
            self.constants[split, metric] = self.constant_of(split, metric)
        return self.constants[split, metric]

    def constant_of(self, split: str, metric: str) -> float:
        rows = next(rows for _, name, rows in self.splits() if name == split)
        gold = np.array([self.classes.index(r["label"]) for r in rows])
        if metric == "loss":
            frequencies = np.bincount(gold) / len(gold)
            return float(-np.sum(frequencies[frequencies > 0] * np.log(frequencies[frequencies > 0])))
        return max(self.metrics[metric](gold, np.full_like(gold, c)) for c in range(len(self.classes)))

    def fairseq(self, variant: Path, described: dict):
        from fairseq import checkpoint_utils
        checkpoint = load_variant(variant)
        if self.model is None:  # built once; each variant only swaps the weights
            allow_checkpoint_globals()
            models, _, self.fairseq_task = checkpoint_utils.load_model_ensemble_and_task(
                [described["source"]], arg_overrides={"data": str(self.data)})
            self.model = models[0].eval()
        self.model.load_state_dict(checkpoint["model"])
        results = []
        for fairseq_split, split, rows in self.splits():
            self.fairseq_task.load_dataset(fairseq_split)
            dataset = self.fairseq_task.dataset(fairseq_split)
            samples = [dataset[i] for i in range(len(rows))]
            with torch.no_grad():
                logits = torch.stack(by_length(
                    lambda batch: self.classify(dataset.collater(batch)["net_input"]["src_tokens"]),
                    samples, lambda sample: len(sample["net_input.src_tokens"]), self.cfg.batch_size))
            # a class index, or for regression fairseq's list of (scaled) targets
            gold = torch.cat([torch.as_tensor(sample["target"]).view(-1) for sample in samples])
            for metric, value, low, high in self.score(gold.numpy(), logits.numpy()):
                results.append((split, len(rows), metric, value, low, high, ""))
        measured = None
        if described["format"] == "fairseq fp32" and described["target_sparsity"] == 0:
            tokens = [dataset[i]["net_input.src_tokens"] for i in range(len(samples))]
            pad = self.fairseq_task.source_dictionary.pad()

            def run(batch):
                with torch.no_grad():
                    self.classify(torch.nn.utils.rnn.pad_sequence(batch, batch_first=True, padding_value=pad))
            measured = speed(run, tokens, self.cfg, "sentences/s")
        return results, measured

    def classify(self, src_tokens):
        return self.model(src_tokens, features_only=True, classification_head_name="sentence_classification_head")[0]

    def onnx(self, variant: Path):
        from optimum.onnxruntime import ORTModelForSequenceClassification
        from transformers import AutoTokenizer
        model = load_onnx(ORTModelForSequenceClassification, variant, threads=self.cfg.threads)
        tokenizer = AutoTokenizer.from_pretrained(variant)
        label_id = {label: int(i) for i, label in model.config.id2label.items()}
        if not self.meta["regression"] and [model.config.id2label[i] for i in range(len(label_id))] != self.classes:
            raise StageError(f"{variant}: its classes {model.config.id2label} are not in the order of "
                             f"{self.data}/label/dict.txt {self.classes}; export it again (dvc repro -f compress_glue)")
        columns = ["sentence1", "sentence2"] if self.meta["pair"] else ["sentence1"]

        def run(batch):
            encoded = tokenizer(*[list(c) for c in zip(*batch)], padding=True, truncation=True,
                                return_tensors="np")
            return model(**encoded).logits

        results = []
        for _, split, rows in self.splits():
            texts = [tuple(r[c] for c in columns) for r in rows]
            logits = np.stack(by_length(lambda batch: np.asarray(run(batch)), texts,
                                        lambda text: sum(map(len, text)), self.cfg.batch_size))
            gold = np.array([regression_target(r["label"], self.meta["label_range"]) for r in rows]
                            if self.meta["regression"] else [label_id[r["label"]] for r in rows])
            for metric, value, low, high in self.score(gold, logits):
                results.append((split, len(rows), metric, value, low, high, ""))
        return results, speed(run, texts, self.cfg, "sentences/s")


def read_tsv_rows(path: Path) -> list[dict]:
    header, *lines = read_lines(path)
    return [dict(zip(header.split("\t"), line.split("\t"))) for line in lines]


def load_onnx(model_class, variant: Path, threads: int):
    """An optimum ONNX Runtime model with a fixed thread count; a broken file is named in the error."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    # idle ONNX Runtime threads spin by default, stealing the cores from whatever is timed next
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    files = sorted(f.name for f in variant.glob("*.onnx"))
    try:
        if model_class.__name__ == "ORTModelForSeq2SeqLM":
            return model_class.from_pretrained(variant, session_options=options)
        return model_class.from_pretrained(variant, file_name=files[0] if files else None, session_options=options)
    except Exception as e:
        raise StageError(f"{variant}: cannot load the ONNX model ({', '.join(files) or 'no .onnx file'}): "
                         f"{type(e).__name__}: {e}") from e


class TranslationEval:
    def __init__(self, cfg, translation):
        self.cfg, self.tr = cfg, translation
        self.data = Path("data/bin/mt")
        n = cfg.max_test_sentences
        self.sources = read_lines(self.data / f"test.raw.{translation.source}")[:n]
        self.references = read_lines(self.data / f"test.raw.{translation.target}")[:n]
        self.model = self.fairseq_task = self.constant = None

    def constant_score(self, split: str, metric: str):
        """BLEU of the best input-ignoring translation: one sentence, output for every source, chosen
        as the best among the first CONSTANT_CANDIDATES references (they share the test set's words)."""
        if self.constant is None:
            from sacrebleu.metrics import BLEU
            self.constant = max(BLEU().corpus_score([c] * len(self.references), [self.references]).score
                                for c in self.references[:CONSTANT_CANDIDATES])
        return self.constant

    def bleu(self, hypotheses: list[str]):
        from sacrebleu.metrics import BLEU
        bleu = BLEU()
        score = bleu.corpus_score(hypotheses, [self.references], n_bootstrap=self.cfg.bootstrap)
        return [("test", len(hypotheses), "bleu", score.score, score._mean - score._ci, score._mean + score._ci,
                 bleu.get_signature().format())]

    def fairseq(self, variant: Path, described: dict):
        from fairseq import checkpoint_utils
        checkpoint = load_variant(variant)
        if self.model is None:
            allow_checkpoint_globals()
            models, _, self.fairseq_task = checkpoint_utils.load_model_ensemble_and_task(
                [described["source"]], arg_overrides={"data": str(self.data)})
            self.model = models[0].eval()
            self.fairseq_task.load_dataset("test")
        self.model.load_state_dict(checkpoint["model"])
        dataset = self.fairseq_task.dataset("test")
        generator = self.fairseq_task.build_generator([self.model], argparse_beam(self.cfg.beam))
        tgt_dict = self.fairseq_task.target_dictionary
        sources = [dataset[i]["source"] for i in range(len(self.sources))]

        def run(batch):
            lengths = torch.tensor([len(s) for s in batch])
            width = int(lengths.max())  # fairseq's translation task pads sources on the left
            tokens = torch.stack([torch.nn.functional.pad(s, (width - len(s), 0), value=tgt_dict.pad())
                                  for s in batch])
            with torch.no_grad():
                out = generator.generate([self.model], {"net_input": {"src_tokens": tokens,
                                                                        "src_lengths": lengths}})
            return [tgt_dict.string(hypos[0]["tokens"], "sentencepiece") for hypos in out]

        hypotheses = by_length(run, sources, len, self.cfg.batch_size)
        measured = None
        if described["format"] == "fairseq fp32" and described["target_sparsity"] == 0:
            measured = speed(run, sources, self.cfg, "sentences/s")
        return self.bleu(hypotheses), measured

    def onnx(self, variant: Path):
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        from stages.hf_m2m100 import decode, encode
        import sentencepiece
        model = load_onnx(ORTModelForSeq2SeqLM, variant, threads=self.cfg.threads)
        sp = sentencepiece.SentencePieceProcessor(model_file=str(self.data / "spm.model"))

        def run(batch):
            input_ids, attention_mask = encode(sp, batch)
            out = model.generate(input_ids=input_ids, attention_mask=attention_mask, num_beams=self.cfg.beam,
                                 max_length=int(1.2 * input_ids.shape[1]) + 12)  # fairseq 1.2x+10, + start, </s>
            return decode(sp, out)

        hypotheses = by_length(run, self.sources, len, self.cfg.batch_size)
        return self.bleu(hypotheses), speed(run, self.sources, self.cfg, "sentences/s")


def argparse_beam(beam: int):
    import argparse
    return argparse.Namespace(beam=beam, max_len_a=1.2, max_len_b=10, min_len=1)


if __name__ == "__main__":
    run_stage(main)
