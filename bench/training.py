"""Training throughput per model size: the pipeline's fairseq masked-LM training against a plain
transformers RobertaForMaskedLM training loop.

Both train the same RoBERTa (layers, hidden, FFN, heads of models.mlm; vocabulary = fairseq's
dictionary with <mask>; pretrain.tokens_per_sample positions) on the same batches: fairseq's own
masked_lm task and batch iterator, its batches built as the pipeline's training builds them
(lib/masked_lm_batches.py; pretrain.max_tokens tokens per batch, pretrain.mask_prob masked),
with the same optimizer (fairseq's adam is Adam with decoupled weight decay, i.e. AdamW, on every
parameter: betas 0.9/0.98, eps 1e-6, pretrain.weight_decay, pretrain.lr), dropout and threads.

Precision: on CPU fairseq trains each size twice, in fp32 and in bf16 exactly as the stages' harness does
(lib.devices.cpu_autocast: --bf16 stripped, each train step under torch.autocast("cpu", bfloat16), so fp32
weights and optimizer with bfloat16 matmuls), giving the bf16 / fp32 speed-up; the transformers loop runs
in fp32 only, against fairseq's fp32 run (the fairseq / transformers ratio compares like with like). On a
GPU both loops run once, in training.precision's choice, with model FLOPs utilisation against a measured
matmul peak.

Tokens/s is the median over the timed updates of tokens / time between consecutive update ends, so
data loading and logging between updates count; start-up, the first `warmup` updates and validation
(turned off) do not. Each run is its own child process, which also gives its peak memory.

Known difference, kept because it is what each library does: fairseq's masked_lm computes the output
projection (hidden x vocabulary) only at the masked positions, RobertaForMaskedLM at every position.
"""
import itertools
import statistics
import tempfile
import time

from bench.memory import in_child


def precisions(params) -> list:
    """The precisions fairseq is timed in: fp32 and bf16 on CPU, training.precision's choice on a GPU."""
    from lib.devices import training_device, training_precision
    return ["fp32", "bf16"] if training_device(params.training) == "cpu" else [training_precision(params.training)]


def run(sizes: list, warmup: int, updates: int, threads: int) -> list:
    """One row per size: row["fairseq"] and row["transformers"] in the first precision (fp32 on CPU),
    row["fairseq_bf16"] on CPU, and row["tokens_per_s"] = fairseq's tokens/s per precision."""
    from lib import hardware
    from lib.model_size import non_embedding_params
    from lib.params import load_params
    params = load_params()
    timed = precisions(params)
    rows = []
    for name in sizes:
        size = params.models.mlm[name]
        row = {"size": name, **size.model_dump(), "non_embedding_parameters": non_embedding_params(size),
               "tokens_per_sample": params.pretrain.recipe.tokens_per_sample,
               "max_tokens": params.pretrain.recipe.max_tokens,
               "threads": threads, "precisions": timed, "cpu": hardware.cpu(), "cpu_flags": hardware.isa_flags()}
        for precision in timed:
            row[fairseq_key(precision, timed)] = {
                **in_child(fairseq_loop, name, warmup, updates, threads, precision), "precision": precision}
        row["transformers"] = {**in_child(transformers_loop, name, warmup, updates, threads, timed[0]),
                               "precision": timed[0]}
        row["ratio"] = row["fairseq"]["tokens_per_s"] / row["transformers"]["tokens_per_s"]
        row["tokens_per_s"] = {p: row[fairseq_key(p, timed)]["tokens_per_s"] for p in timed}
        row["bf16_speedup"] = (row["tokens_per_s"]["bf16"] / row["tokens_per_s"]["fp32"]
                               if {"fp32", "bf16"} <= set(timed) else None)
        print(f"training {name}: fairseq " + ", ".join(f"{p} {v:.0f}" for p, v in row["tokens_per_s"].items())
              + f" tokens/s, transformers {timed[0]} {row['transformers']['tokens_per_s']:.0f} tokens/s, ratio "
              f"{row['ratio']:.2f}" + (f", bf16 / fp32 {row['bf16_speedup']:.2f}" if row["bf16_speedup"] else ""),
              flush=True)
        rows.append(row)
    return rows


def fairseq_key(precision: str, timed: list) -> str:
    """A row's key for fairseq's run in `precision`: "fairseq" for the first (compared with transformers)."""
    return "fairseq" if precision == timed[0] else f"fairseq_{precision}"


def fairseq_loop(name: str, warmup: int, updates: int, threads: int, precision: str) -> dict:
    """`python -m stages.pretrain NAME`'s own fairseq-train run in `precision`, stopped after warmup +
    updates updates, without validation or checkpoints."""
    import torch
    from fairseq import trainer
    from lib.devices import cpu_autocast
    from lib.fairseq_cli import run_fairseq

    params, args = pipeline(name, warmup + updates, threads, precision)
    # as lib.harness.train_with_budget: on CPU, bf16 is autocast around fairseq's fp32 model, not fairseq's
    # --bf16 (which would cast the model itself to bfloat16 and time something the stages never run)
    args, cpu_bf16 = cpu_autocast(args)
    clock, weights = Clock("--cpu" not in args), set()
    original = trainer.Trainer.train_step

    def train_step(self, samples, raise_oom=False):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=cpu_bf16):
            out = original(self, samples, raise_oom)
        clock.tick(sum(s["net_input"]["src_tokens"].numel() for s in samples if s and "net_input" in s))
        if not weights:  # once, in a warm-up update: the timed ones stay untouched
            weights.update(str(p.dtype).removeprefix("torch.") for p in self.model.parameters())
        return out

    trainer.Trainer.train_step = train_step
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as save_dir:
        run_fairseq("train", [*args, "--disable-validation", "--no-save", "--save-dir", save_dir])
    # the weights' dtypes after an update: float32 under CPU autocast, bfloat16 had fairseq's --bf16 run
    return {**clock.summary(warmup, params, name), "autocast_bf16": cpu_bf16, "weights_dtype": sorted(weights)}


def transformers_loop(name: str, warmup: int, updates: int, threads: int, precision: str) -> dict:
    """A plain training loop of transformers' RobertaForMaskedLM on fairseq's masked batches, autocast to
    `precision` on a GPU only (run() asks for fp32 on CPU)."""
    import torch
    from transformers import RobertaConfig, RobertaForMaskedLM

    params, args = pipeline(name, warmup + updates, threads, precision)
    torch.set_num_threads(threads)
    size, cfg = params.models.mlm[name], params.pretrain.recipe
    task, batches = fairseq_batches(args)
    pad = task.source_dictionary.pad()
    cuda = "--cpu" not in args
    device = torch.device("cuda" if cuda else "cpu")
    model = RobertaForMaskedLM(RobertaConfig(
        vocab_size=len(task.source_dictionary), hidden_size=size.hidden, num_hidden_layers=size.layers,
        num_attention_heads=size.heads, intermediate_size=size.ffn, hidden_act="gelu",
        max_position_embeddings=cfg.tokens_per_sample + 2,  # fairseq's learned positions start at pad + 1
        type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=pad, bos_token_id=0, eos_token_id=2,
        hidden_dropout_prob=cfg.dropout, attention_probs_dropout_prob=cfg.dropout)).to(device).train()
    # a constant learning rate: fairseq's warm-up schedule changes the values, not the work per update
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
                                  weight_decay=cfg.weight_decay)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    clock = Clock(cuda)
    for sample in itertools.islice(batches, warmup + updates):
        tokens, target = sample["net_input"]["src_tokens"].to(device), sample["target"].to(device)
        # on a GPU, the precision fairseq trains in (no loss scaling: only the speed is measured)
        with torch.autocast(device.type, dtype=dtype, enabled=cuda and dtype != torch.float32):
            labels = target.masked_fill(target == pad, -100)  # loss at the masked positions only
            loss = model(input_ids=tokens, attention_mask=tokens.ne(pad), labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        clock.tick(tokens.numel())
    return clock.summary(warmup, params, name)


def pipeline(name: str, total_updates: int, threads: int, precision: str):
    """params.yaml with an update budget and training.precision = `precision`, and the exact fairseq-train
    flags `python -m stages.pretrain NAME` would run (lib/recipes.pretrain_args, which the stage calls), so
    this cannot drift from the stage. Only ever called in a throwaway child process (device_flags sets the
    thread count)."""
    from lib import schedule  # noqa: F401  registers --lr-scheduler budget_linear, which the flags name
    from lib.params import load_params
    from lib.recipes import pretrain_args
    params = load_params()
    recipe = params.pretrain.recipe
    budget = recipe.budget.model_copy(update={"seconds": None, "updates": total_updates})
    params = params.model_copy(update={  # params are frozen: copies with the changes
        "pretrain": params.pretrain.model_copy(update={"sizes": [name],  # any models.mlm size
                                                       "recipe": recipe.model_copy(update={"budget": budget})}),
        "training": params.training.model_copy(update={"threads": threads, "precision": precision})})
    args, _ = pretrain_args(params, name)
    return params, args


def fairseq_batches(args: list):
    """fairseq's masked_lm task for these flags, and its shuffled batches, epoch after epoch, built as the
    pipeline's training builds them (lib/masked_lm_batches.py)."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from lib.masked_lm_batches import batched_masking
    cfg = convert_namespace_to_omegaconf(
        options.parse_args_and_arch(options.get_training_parser(), [str(a) for a in args]))
    task = tasks.setup_task(cfg.task)
    with batched_masking():
        task.load_dataset("train")
    iterator = task.get_batch_iterator(
        dataset=task.dataset("train"), max_tokens=cfg.dataset.max_tokens, max_sentences=cfg.dataset.batch_size,
        max_positions=task.max_positions(), required_batch_size_multiple=cfg.dataset.required_batch_size_multiple,
        seed=cfg.common.seed)

    def batches():
        while True:
            yield from iterator.next_epoch_itr(shuffle=True)
    return task, batches()


class Clock:
    """When each update ended and how many tokens it trained on."""

    def __init__(self, cuda: bool):
        self.cuda, self.ends, self.tokens = cuda, [], []

    def tick(self, tokens: int):
        if self.cuda:
            import torch
            torch.cuda.synchronize()  # kernels are asynchronous: the update ends when they do
        self.ends.append(time.perf_counter())
        self.tokens.append(tokens)

    def summary(self, warmup: int, params, name: str) -> dict:
        from lib.devices import training_precision
        from lib.model_size import non_embedding_params
        warmup = max(warmup, 1)  # the first update has no previous end to time it from
        rates = [t / (end - before) for t, end, before in
                 zip(self.tokens[warmup:], self.ends[warmup:], self.ends[warmup - 1:])]
        if not rates:
            raise RuntimeError(f"training {name}: {len(self.ends)} updates ran, none left to time after the warm-up")
        tokens_per_s = statistics.median(rates)
        flops_per_s = 6 * non_embedding_params(params.models.mlm[name]) * tokens_per_s  # Kaplan et al.'s 6N
        result = {"tokens_per_s": round(tokens_per_s, 1), "updates_timed": len(rates),
                  "tokens_per_update": statistics.median(self.tokens[warmup:]),
                  "tokens_per_s_mean": round(sum(self.tokens[warmup:]) / (self.ends[-1] - self.ends[warmup - 1]), 1),
                  "model_gflops_per_s": round(flops_per_s / 1e9, 2), "mfu": None, "matmul_peak_tflops": None,
                  "peak_gpu_mb": None}
        if self.cuda:
            import torch
            # read before the matmul peak's own tensors count; each loop is its own process, so the peak is its own
            result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
            peak = matmul_peak(training_precision(params.training))  # pipeline() set an explicit one
            result.update(mfu=round(flops_per_s / peak, 4), matmul_peak_tflops=round(peak / 1e12, 1))
        return result


def matmul_peak(precision: str, n: int = 8192, repeats: int = 10) -> float:
    """The GPU's measured peak FLOP/s: the fastest of repeated n x n matmuls in the training precision."""
    import torch
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    a, b = (torch.randn(n, n, device="cuda", dtype=dtype) for _ in range(2))
    times = []
    for i in range(repeats + 3):  # 3 warm-up runs
        torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return 2 * n ** 3 / min(times[3:])
