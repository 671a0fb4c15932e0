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


def pearson(gold, predicted):
    return 100.0 * float(np.corrcoef(gold, predicted)[0, 1]) if np.std(gold) and np.std(predicted) else 0.0


def spearman(gold, predicted):  # Pearson's r of the ranks; tied values share their mean rank
    return pearson(rankdata(gold), rankdata(predicted))


REGRESSION_METRICS = {"pearson": pearson, "spearman": spearman}
