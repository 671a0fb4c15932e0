"""The schema of params.yaml (of the dataset catalog, datasets.yaml: lib/catalog.py). Every stage validates
both files before doing any work, so a typo fails fast with the key's full path instead of hours into a run."""
from typing import Annotated, Literal

from pydantic import Field, model_validator

from lib.catalog import Dataset, Strict


class Translation(Strict):
    dataset: str
    source: str
    target: str


class Data(Strict):
    corpus: str
    glue_tasks: list[str] = Field(min_length=1)
    translation: Translation


# Stage parameters have no defaults: every value that shapes an output is written in params.yaml,
# where DVC tracks it, and a forgotten key fails instead of silently taking a value.
Cap = int | None  # a limit on examples; None (null) means all of them


class PrepareMlm(Strict):
    vocab_size: int = Field(ge=100, le=256_000)
    model_type: Literal["unigram", "bpe"]
    sentencepiece_sample: int = Field(ge=100)
    max_train_lines: Cap = Field(ge=1)


class PrepareGlue(Strict):
    max_train_examples: Cap = Field(ge=1)
    max_dev_examples: Cap = Field(ge=1)


class PrepareMt(Strict):
    vocab_size: int = Field(ge=100, le=256_000)
    model_type: Literal["unigram", "bpe"]
    sentencepiece_sample: int = Field(ge=100)
    max_train_pairs: Cap = Field(ge=1)


class ModelSize(Strict):
    layers: int = Field(ge=1, le=96)       # translation: encoder and decoder layers each
    hidden: int = Field(ge=8, le=16384)
    ffn: int = Field(ge=8, le=65536)
    heads: int = Field(ge=1, le=256)

    @model_validator(mode="after")
    def _heads_divide_hidden(self):
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be a multiple of heads ({self.heads})")
        return self


class Models(Strict):
    mlm: dict[str, ModelSize] = Field(min_length=1)
    mt: dict[str, ModelSize] = Field(min_length=1)


class Budget(Strict):
    """Training budget: wall-clock seconds of training (the paper's axis) or updates (exactly
    reproducible); exactly one is set."""
    seconds: float | None = Field(gt=0)
    updates: int | None = Field(ge=1)

    @model_validator(mode="after")
    def _exactly_one(self):
        if (self.seconds is None) == (self.updates is None):
            raise ValueError("set exactly one of seconds or updates (the other null)")
        return self


class Training(Strict):
    device: Literal["auto", "cpu", "cuda"]
    precision: Literal["auto", "fp16", "bf16", "fp32"]  # auto: fp16 on CUDA, bf16 on a CPU with bf16 matmuls
    world_size: int = Field(ge=1)                # data-parallel ranks, launched with torchrun
    threads: int | None = Field(ge=1)            # CPU threads (null: torch's default)
    loader_workers: Literal["auto"] | Annotated[int, Field(ge=0)]  # fairseq's --num-workers (lib/devices.loader_workers)
    seed: int = Field(ge=0)


class Recipe(Strict):
    """A training stage's recipe (`<stage>.recipe`): the values its fairseq-train flags take (lib/recipes.py).
    The stage's sizes stay outside it, so that a stage depends on its recipe and on its own size only."""
    budget: Budget
    max_tokens: int = Field(ge=16)               # batch size in tokens
    lr: float = Field(gt=0, le=1)
    lr_schedule: Literal["linear", "inverse_sqrt"]  # linear: decays to end_lr as the budget is spent
    end_lr: float = Field(ge=0)                  # linear only
    warmup_updates: int = Field(ge=0)
    dropout: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0)
    validate_every: int = Field(ge=1)            # updates between validation points of the curve
    valid_batches: int = Field(ge=1)             # batches per validation (a fixed slice of valid)

    @model_validator(mode="after")
    def _end_below_peak(self):
        if self.end_lr > self.lr:
            raise ValueError(f"end_lr {self.end_lr} is above lr {self.lr}: the schedule decays to end_lr")
        return self


class PretrainRecipe(Recipe):
    tokens_per_sample: int = Field(ge=8, le=4096)
    mask_prob: float = Field(gt=0, lt=1)


class FinetuneRecipe(Recipe):
    batch_size: int = Field(ge=1)                # sentences


class TrainMtRecipe(Recipe):
    label_smoothing: float = Field(ge=0, lt=1)
    bleu_beam: int = Field(ge=1)                 # beam for the BLEU points of the curve


class Pretrain(Strict):
    sizes: list[str] = Field(min_length=1)       # keys of models.mlm
    recipe: PretrainRecipe


class Finetune(Strict):
    random_init_sizes: list[str]                 # the control: also fine-tuned from random initialisation
    recipe: FinetuneRecipe


class TrainMt(Strict):
    sizes: list[str] = Field(min_length=1)       # keys of models.mt
    recipe: TrainMtRecipe


class Recovery(Strict):
    """Fine-tuning after pruning with the mask held fixed: seconds or updates, or neither (none)."""
    seconds: float | None = Field(gt=0)
    updates: int | None = Field(ge=1)

    @model_validator(mode="after")
    def _at_most_one(self):
        if self.seconds is not None and self.updates is not None:
            raise ValueError("set at most one of seconds or updates (both null: no recovery)")
        return self


class Compress(Strict):
    # fraction of the Transformer layers' weights set to zero by magnitude (0: dense)
    sparsities: list[float] = Field(min_length=1)
    pruning: Literal["global", "layer"]          # one magnitude threshold over all layers, or per matrix
    bits: list[int] = Field(min_length=1)        # simulated symmetric uniform quantization, k bits
    granularity: Literal["tensor", "channel"]    # one quantization scale per matrix or per output row
    onnx_sparsities: list[float]                 # exported to ONNX fp32, ONNX Runtime int8 and int4
    recovery: Recovery                           # fine-tuning of each pruned model, mask fixed
    # the int8 scheme the CPU calls for is kept when it agrees with fp32 on this share of the check set
    int8_min_agreement: float = Field(gt=0, le=1)
    int8_check_examples: int = Field(ge=8)        # dev examples (GLUE) / valid sentence pairs (translation)

    @model_validator(mode="after")
    def _ranges(self):
        for key, values in (("sparsities", self.sparsities), ("onnx_sparsities", self.onnx_sparsities)):
            for i, s in enumerate(values):
                if not 0 <= s < 1:
                    raise ValueError(f"{key}.{i}: sparsity {s} is outside [0, 1)")
            if len(set(values)) != len(values):
                raise ValueError(f"{key}: values are listed twice: {values}")
            # each sparsity names its variants' directories to two decimals (s0.50-q8): two that round
            # alike would collide mid-run
            names = [f"{s:.2f}" for s in values]
            clash = sorted({n for n in names if names.count(n) > 1})
            if clash:
                raise ValueError(f"{key}: {values} give variants the same name (sparsity to two decimals: "
                                 f"{clash}); keep values at least 0.01 apart")
        for i, b in enumerate(self.bits):
            if not 2 <= b <= 16:
                raise ValueError(f"bits.{i}: {b} is outside 2..16")
        if len(set(self.bits)) != len(self.bits):
            raise ValueError(f"bits: values are listed twice: {self.bits}")
        missing = [s for s in self.onnx_sparsities if s not in self.sparsities]
        if missing:
            raise ValueError(f"onnx_sparsities: {missing} not in sparsities {self.sparsities}")
        return self


class Evaluate(Strict):
    max_dev_examples: Cap = Field(ge=1)          # per GLUE dev split (null: all); recorded in each row
    max_test_sentences: Cap = Field(ge=1)        # translation test set
    beam: int = Field(ge=1)                      # beam search for BLEU
    batch_size: int = Field(ge=1)                # evaluation batch and the throughput batch
    threads: int = Field(ge=1)                   # fixed for every timing
    scoring_threads: Literal["auto"] | Annotated[int, Field(ge=1)]  # CPU threads of the scoring passes
    device: Literal["auto", "cpu", "cuda"]       # where the fairseq variants are scored (lib/devices.py)
    repeats: int = Field(ge=1)                   # timings are the median of this many runs
    throughput_examples: int = Field(ge=1)       # inputs of the throughput timing
    latency_examples: int = Field(ge=1)          # batch-1 inputs per timed run
    bootstrap: int = Field(ge=10)                # resamples for the 95% confidence intervals


class Report(Strict):
    loss_tolerance: float = Field(ge=0)          # bits; loss differences below this are ties in the verdicts
    max_bytes: int | None = Field(ge=1)          # deployment limit for the recommendation (zipped bytes)
    max_latency_ms: float | None = Field(gt=0)   # deployment limit: batch-1 latency


class Plan(Strict):
    """The size planner (issue 35; plan/dvc.yaml, `make plan`): calibration runs and the scaling-law fit."""
    mlm_sizes: list[str] = Field(min_length=1)    # the candidates calibrated: keys of models.mlm
    mt_sizes: list[str] = Field(min_length=1)     # keys of models.mt
    fractions: list[float] = Field(min_length=1)  # calibration runs: every size at these shares of its budget
    mlm_validate_every: int | None = Field(ge=1)  # updates between their curves' points (null: the recipe's)
    mt_validate_every: int | None = Field(ge=1)
    target_budget: float | None = Field(gt=0)     # budget predicted for, in the recipe's unit (null: the recipe's)
    crossover_range: list[float] = Field(min_length=2, max_length=2)  # budgets searched for crossovers
    bootstrap: int = Field(ge=10)                # resamples of the end points for the intervals
    fix_alpha: float | None = Field(gt=0)        # hold the law's exponents (null: fitted)
    fix_beta: float | None = Field(gt=0)
    fit_full_runs: bool                          # also fit the full-budget runs' end points

    @model_validator(mode="after")
    def _ranges(self):
        for i, f in enumerate(self.fractions):
            if not 0 < f < 1:
                raise ValueError(f"fractions.{i}: {f} is outside (0, 1): a share of the budget")
        if len(set(self.fractions)) != len(self.fractions):
            raise ValueError(f"fractions: values are listed twice: {self.fractions}")
        lo, hi = self.crossover_range
        if not 0 < lo < hi:
            raise ValueError(f"crossover_range: {self.crossover_range} must be [low, high] with 0 < low < high")
        return self


class Check(Strict):
    baseline: str = Field(pattern=r"\.json$")  # the committed baseline of this profile's metrics
    # allowed change of each metric where it is not compared exactly (stages/check.py), by name prefix
    tolerance: dict[str, float] = Field(min_length=1)


class Params(Strict):
    data: Data
    prepare_mlm: PrepareMlm
    prepare_glue: PrepareGlue
    prepare_mt: PrepareMt
    models: Models
    training: Training
    pretrain: Pretrain
    finetune: Finetune
    train_mt: TrainMt
    compress: Compress
    evaluate: Evaluate
    report: Report
    plan: Plan
    check: Check
    datasets: dict[str, Dataset]

    @model_validator(mode="after")
    def _sizes_exist(self):
        for key, names, grid in (("pretrain.sizes", self.pretrain.sizes, self.models.mlm),
                                 ("train_mt.sizes", self.train_mt.sizes, self.models.mt),
                                 ("plan.mlm_sizes", self.plan.mlm_sizes, self.models.mlm),
                                 ("plan.mt_sizes", self.plan.mt_sizes, self.models.mt)):
            for i, name in enumerate(names):
                if name not in grid:
                    raise ValueError(f"{key}.{i}: '{name}' is not a size in models; known: {sorted(grid)}")
            if len(set(names)) != len(names):
                raise ValueError(f"{key}: sizes are listed twice: {names}")
        for i, name in enumerate(self.finetune.random_init_sizes):
            if name not in self.pretrain.sizes:
                raise ValueError(f"finetune.random_init_sizes.{i}: '{name}' is not one of pretrain.sizes "
                                 f"{self.pretrain.sizes}")
        return self

    @model_validator(mode="after")
    def _selected_datasets_exist(self):
        def need(key, name, kind):
            if name not in self.datasets:
                raise ValueError(f"{key}: '{name}' is not a dataset; known: {sorted(self.datasets)}")
            if self.datasets[name].kind != kind:
                raise ValueError(f"{key}: '{name}' is a {self.datasets[name].kind} dataset, expected {kind}")

        need("data.corpus", self.data.corpus, "corpus")
        for i, task in enumerate(self.data.glue_tasks):
            need(f"data.glue_tasks.{i}", task, "glue")
        tr = self.data.translation
        need("data.translation.dataset", tr.dataset, "parallel")
        langs = self.datasets[tr.dataset].languages
        for side in ("source", "target"):
            if getattr(tr, side) not in langs:
                raise ValueError(f"data.translation.{side}: '{getattr(tr, side)}' is not one of {langs}")
        if tr.source == tr.target:
            raise ValueError("data.translation: source and target must differ")
        return self
