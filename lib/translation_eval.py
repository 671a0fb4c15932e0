"""Translation's evaluation (stages/evaluate.py): sacrebleu BLEU and chrF of every variant on the capped test set,
fairseq variants in PyTorch on evaluate.device (the dense one then timed on the CPU), ONNX variants in ONNX Runtime
on raw text on evaluate.scoring_threads (the dense ones then timed on evaluate.threads), each with the same beam
search."""
from pathlib import Path

import torch

from lib.checkpoints import allow_checkpoint_globals
from lib.files import read_lines
from lib.inference import by_length, cpu_speed, load_onnx, onnx_timing_model, scoring_threads, speed
from lib.metrics import constant_translation, translation_scores
from lib.predictions import translation_predictions
from lib.recipes import generation_args
from lib.variant_weights import load_variant
from lib.variants import DENSE

CONSTANT_CANDIDATES = 100  # translation's constant baseline: sentences tried (each costs one corpus BLEU)


class TranslationEval:
    def __init__(self, cfg, translation, device: str = "cpu"):
        self.cfg, self.tr, self.device, self.scored_on = cfg, translation, device, "cpu"
        self.scoring_threads = scoring_threads(cfg.scoring_threads)
        self.data = Path("data/bin/mt")
        n = cfg.max_test_sentences
        self.sources = read_lines(self.data / f"test.raw.{translation.source}")[:n]
        self.references = read_lines(self.data / f"test.raw.{translation.target}")[:n]
        self.model, self.fairseq_task, self.constants, self.predicted = None, None, {}, []

    def constant_score(self, split: str, metric: str):
        """BLEU or chrF of the best input-ignoring translation (lib.metrics.constant_translation), computed once."""
        if metric not in self.constants:
            self.constants[metric] = constant_translation(self.references, metric, CONSTANT_CANDIDATES)
        return self.constants[metric]

    def scores(self, hypotheses: list[str]):
        """BLEU's and chrF's result rows; keeps the translations in self.predicted."""
        self.predicted = translation_predictions(self.sources, self.references, hypotheses)
        return [("test", len(hypotheses), *score) for score in
                translation_scores(hypotheses, self.references, self.cfg.bootstrap)]

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
        self.scored_on = self.device
        self.model.to(self.device)
        dataset = self.fairseq_task.dataset("test")
        generator = self.fairseq_task.build_generator([self.model], generation_args(self.cfg.beam))
        tgt_dict = self.fairseq_task.target_dictionary
        sources = [dataset[i]["source"] for i in range(len(self.sources))]

        def run(batch):
            lengths = torch.tensor([len(s) for s in batch])
            width = int(lengths.max())  # fairseq's translation task pads sources on the left
            tokens = torch.stack([torch.nn.functional.pad(s, (width - len(s), 0), value=tgt_dict.pad())
                                  for s in batch])
            on = next(self.model.parameters()).device
            with torch.no_grad():
                out = generator.generate([self.model], {"net_input": {"src_tokens": tokens.to(on),
                                                                        "src_lengths": lengths.to(on)}})
            return [tgt_dict.string(hypos[0]["tokens"].cpu(), "sentencepiece") for hypos in out]

        results = self.scores(by_length(run, sources, len, self.cfg.batch_size))
        if variant.name != DENSE:  # timed: the deployment format only
            return results, None
        return results, cpu_speed(self.model, run, sources, len, self.cfg, "sentences/s")

    def onnx(self, variant: Path, timed_as):
        from optimum.onnxruntime import ORTModelForSeq2SeqLM
        from lib.ort_generate import translate
        import sentencepiece
        model = load_onnx(ORTModelForSeq2SeqLM, variant, self.scoring_threads)
        self.scored_on = "cpu"
        sp = sentencepiece.SentencePieceProcessor(model_file=str(self.data / "spm.model"))

        def run(batch):
            return translate(model, sp, batch, self.cfg.beam)

        results = self.scores(by_length(run, self.sources, len, self.cfg.batch_size))
        if timed_as is None:
            model = onnx_timing_model(ORTModelForSeq2SeqLM, variant, model, self.scoring_threads, self.cfg.threads)
        return results, speed(run, self.sources, len, self.cfg, "sentences/s", timed_as)
