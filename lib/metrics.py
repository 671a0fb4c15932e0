"""The scores evaluate computes: GLUE's classification and regression metrics (in points, 0-100), the dev
cross-entropy, and the 95% bootstrap confidence interval of any of them."""
import numpy as np
from scipy.stats import rankdata


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


def constant_classification(gold, metric, classes: int) -> float:
    """The best score of a predictor that ignores its input: of `metric` (a scorer of gold and predicted class
    indices), always the best single class; for None (the dev loss), the gold label frequencies' entropy."""
    if metric is None:
        frequencies = np.bincount(gold) / len(gold)
        return float(-np.sum(frequencies[frequencies > 0] * np.log(frequencies[frequencies > 0])))
    return max(metric(gold, np.full_like(gold, c)) for c in range(classes))


def pearson(gold, predicted):
    return 100.0 * float(np.corrcoef(gold, predicted)[0, 1]) if np.std(gold) and np.std(predicted) else 0.0


def spearman(gold, predicted):  # Pearson's r of the ranks; tied values share their mean rank
    return pearson(rankdata(gold), rankdata(predicted))


REGRESSION_METRICS = {"pearson": pearson, "spearman": spearman}


TRANSLATION_METRICS = ("bleu", "chrf")  # sacrebleu's, in this order: BLEU is translation's headline


def sacrebleu_metric(name: str):
    from sacrebleu.metrics import BLEU, CHRF
    return {"bleu": BLEU, "chrf": CHRF}[name]()


def translation_scores(hypotheses: list[str], references: list[str], resamples: int) -> list[tuple]:
    """(metric, value, low, high, sacrebleu's signature) of corpus BLEU and chrF, each with sacrebleu's 95%
    bootstrap interval over `resamples` resamples of the sentences."""
    scores = []
    for name in TRANSLATION_METRICS:
        metric = sacrebleu_metric(name)
        score = metric.corpus_score(hypotheses, [references], n_bootstrap=resamples)
        scores.append((name, score.score, score._mean - score._ci, score._mean + score._ci,
                       metric.get_signature().format()))
    return scores


def constant_translation(references: list[str], name: str, candidates: int) -> float:
    """The best corpus score of an input-ignoring translator: one sentence, output for every source, chosen as
    the best among the first `candidates` references (they share the test set's words)."""
    metric = sacrebleu_metric(name)
    return max(metric.corpus_score([c] * len(references), [references]).score for c in references[:candidates])
