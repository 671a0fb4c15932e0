"""compress: every compressed variant of one fine-tuned model, in one process (importing torch and
fairseq costs more than compressing a small model).

For each sparsity in `compress.sparsities`: unstructured magnitude pruning of the Transformer layers'
weight matrices (attention projections and FFN; embeddings, layer norms, biases and the classifier head
stay dense, as in the paper), then that pruned model as fp32 and as simulated symmetric uniform k-bit
quantization for each k in `compress.bits`. Pruned zeros stay zero under quantization (code 0).
For each sparsity in `compress.onnx_sparsities`: the deployment models, converted to transformers,
exported to ONNX with optimum and quantized to int8 with ONNX Runtime (dynamic, per channel).
With `compress.recovery` set, each pruned model is first fine-tuned again with its mask held fixed
(the source stage's recipe: finetune or train_mt, for that many seconds or updates); its variants then
start from the recovered weights, kept in recovered/s<sparsity>/ with the recovery's learning curve.

Each variant stores only the matrices compression changes (k-bit variants as packed k-bit codes plus
scales, so bytes on disk are honest; each matrix dense or, where smaller, as a bitmask and its non-zeros:
lib/variant_weights.py); lib/variant_weights.load_variant puts them back into the source checkpoint.
ONNX variants are standalone directories that optimum loads. Every variant has a variant.json.

Writes models/compressed/<size>-<task>/ (GLUE) or models/compressed/mt-<size>/ (translation).

Usage: python -m stages.compress glue SIZE TASK [--random-init]
       python -m stages.compress mt SIZE
"""
import io
import json
import re
import shutil
import zipfile
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import torch

from lib.checkpoints import export_checkpoint, load_checkpoint
from lib.errors import StageError, log, summary
from lib.files import atomic_dir, read_lines, scratch_dir, sha256sum, write_json
from lib.glue import read_tsv
from lib.glue_task import GLUE_DATA, class_labels, glue_meta, label_names
from lib.harness import WORK_DIR, run_fingerprint, train_with_budget
from lib.onnx_export import onnx_files, share, zipped_bytes
from lib.params import load_params
from lib.recipes import MT_DATA, finetune_args, translation_args
from lib.stage import run_stage
from lib.variant_weights import compact, quantize
from lib.variants import (COMPRESSED_DIR, FAIRSEQ_FP32, ONNX_FORMATS, RECOVERED_DIR, SIMULATED, VARIANT_FILE,
                          WEIGHTS_FILE, model_arg, sparsity_tag, variant_name)

# the weight matrices of attention (self and encoder-decoder) and FFN in every layer, fairseq names
LAYER_MATRIX = re.compile(r"layers\.\d+\.((self_attn|encoder_attn)\.(q|k|v|out)_proj|fc1|fc2)\.weight$")


def main(argv):
    params = load_params()
    cfg = params.compress
    name, size_name, task, size, source = model_arg(argv, params, "compress")
    init = "random" if "--random-init" in argv else "pretrained"
    if init == "random":  # the pretraining control is compared dense only
        cfg = cfg.model_copy(update={"sparsities": [0.0], "bits": [], "onnx_sparsities": []})
    checkpoint = load_checkpoint(source / "checkpoint.pt")
    state = checkpoint["model"]
    matrices = [k for k in state if LAYER_MATRIX.search(k)]
    if not matrices:
        raise StageError(f"{source}/checkpoint.pt: no Transformer layer weight matrices found")
    described = {"size": size_name, "task": task, **size.model_dump(), "init": init,
                 "source": str(source / "checkpoint.pt"),
                 "pruning": cfg.pruning, "granularity": cfg.granularity}
    recovery = cfg.recovery if (cfg.recovery.seconds or cfg.recovery.updates) else None
    counted = deployed(state, task)
    total = sum(v.numel() for v in counted.values())

    out = COMPRESSED_DIR / name
    # zip sizes are computed on the other core while this one prunes, quantizes and exports (zlib releases
    # the GIL): each variant.json is written once its zip is measured. Each queued zip holds its variant's
    # packed weights, so a sparsity waits for the previous sparsity's zips: at most two sparsities' weights
    # wait in memory (unbounded, the paper translator's 40 variants grew past 24 GB)
    with atomic_dir(out) as tmp, ThreadPoolExecutor(max_workers=1) as zipper:
        pending = []  # (variant.json path, its record, the futures of the zip sizes that add up to bytes_zip)
        dense_zip, queued = None, []
        for i, sparsity in enumerate(cfg.sparsities, 1):
            wait(queued)
            queued = [z for _, _, zips in pending for z in zips if not z.done()]
            pruned = prune({k: state[k] for k in matrices}, sparsity, cfg.pruning)
            model, recovered = {**state, **pruned}, None
            if recovery and sparsity > 0:
                model, recovered = recover(params, name, size_name, task, {**checkpoint, "model": model},
                                           sparsity, tmp / RECOVERED_DIR / sparsity_tag(sparsity))
                pruned = {k: model[k] for k in matrices}
                counted = deployed(model, task)
            zeros = sum(int((w == 0).sum()) for w in pruned.values())
            measured = zeros / sum(w.numel() for w in pruned.values())
            zeros_outside = sum(int((v == 0).sum()) for k, v in counted.items() if k not in matrices)
            # zip of the weights that compression leaves as they are; every variant's zip size adds it. They are
            # the same at every sparsity unless a recovery retrained them, so then they are zipped once
            if recovered or dense_zip is None:
                dense_zip = zipper.submit(zip_bytes, {k: v for k, v in counted.items() if k not in matrices})
            common = {**described, "target_sparsity": sparsity, "sparsity": round(measured, 6),
                      "parameters": total, "nonzero_parameters": total - zeros - zeros_outside,
                      "recovery": recovered}
            if recovered:
                common["source"] = str(out / RECOVERED_DIR / sparsity_tag(sparsity) / "checkpoint.pt")
            for bits in [32, *cfg.bits]:
                variant = tmp / variant_name(sparsity, bits)
                variant.mkdir()
                stored, nonzero = pruned, common["nonzero_parameters"]
                if bits != 32:
                    quantized = {k: quantize(w, bits, cfg.granularity) for k, w in pruned.items()}
                    stored = {k: q for k, (q, _) in quantized.items()}
                    # rounding sends more small weights to zero
                    nonzero = total - zeros_outside - sum(z for _, z in quantized.values())
                # on disk each matrix in the smaller of its dense and sparse forms; bytes and bytes_zip below
                # measure the dense form (bytes_zip: what the non-zeros need, the yardstick of the file's size)
                with open(variant / WEIGHTS_FILE, "wb") as f:  # a full disk: OSError(ENOSPC), not a bare RuntimeError
                    torch.save({k: compact(v) for k, v in stored.items()}, f)
                matrix_bytes = sum(w.numel() * bits // 8 for w in pruned.values())
                pending.append((variant / VARIANT_FILE, {
                    **common, "variant": variant.name, "bits": bits, "nonzero_parameters": nonzero,
                    "format": FAIRSEQ_FP32 if bits == 32 else SIMULATED,
                    # a standalone model at this precision: the matrices at k bits (+ scales), the rest fp32
                    "bytes": matrix_bytes + scale_bytes(stored) + 4 * (total - sum(w.numel() for w in pruned.values())),
                    "bytes_zip": None, "files": {WEIGHTS_FILE: (variant / WEIGHTS_FILE).stat().st_size}},
                    [dense_zip, zipper.submit(zip_bytes, packed_tensors(stored))]))
            onnx = sparsity in cfg.onnx_sparsities
            if onnx:
                pending += export_onnx(task, {**checkpoint, "model": model}, tmp, sparsity, common, params, zipper)
            log(f"compress {name}: [{i}/{len(cfg.sparsities)}] sparsity {sparsity} (measured {measured:.4f}): "
                f"fp32 + {cfg.bits} bits{', ONNX fp32 + int8 + int4' if onnx else ''}")
        for path, record, zips in pending:
            write_json(path, {**record, "bytes_zip": sum(z.result() for z in zips)})
    shutil.rmtree(WORK_DIR / "compress" / name, ignore_errors=True)
    summary(f"compress {name}", f"{len(pending)} variants in {out}",
            f"{sum(f.stat().st_size for f in out.rglob('*') if f.is_file()):,} bytes")


def recover(params, name: str, size_name: str, task: str, pruned_checkpoint: dict, sparsity: float,
            out: Path) -> tuple[dict, dict]:
    """Recovery fine-tuning of a pruned model with its mask held fixed: the source stage's recipe
    (finetune for a classifier, train_mt for translation) from the pruned weights, for
    compress.recovery's seconds or updates. Pruned weights get zero gradients, so Adam never moves
    them (fp16 master copies included) and they stay exactly zero. Writes out/checkpoint.pt and
    out/curve.csv; returns the recovered state dict and what the recovery did.

    A finished recovery is kept in models/.work/compress/<model>/ until the whole stage succeeds, so
    an interrupted stage resumes there instead of training again."""
    budget = params.compress.recovery
    work = WORK_DIR / "compress" / name
    work.mkdir(parents=True, exist_ok=True)
    init = work / "init.tmp"
    with open(init, "wb") as f:  # through a Python file: a full disk raises OSError(ENOSPC)
        torch.save(pruned_checkpoint, f)
    # named by content: a changed source model or sparsity never resumes a stale run
    init = init.rename(work / f"init-{sparsity_tag(sparsity)}-{sha256sum(init)[:16]}.pt")
    if task == "translation":
        args, flops_of_batch = translation_args(params, size_name, init=init, budget=budget)
    else:
        args, flops_of_batch = finetune_args(params, size_name, task, init=init, budget=budget)
    masks = {k: v != 0 for k, v in pruned_checkpoint["model"].items() if LAYER_MATRIX.search(k)}
    run = work / sparsity_tag(sparsity)
    done = run / "recovered.pt"
    label = f"compress {name} recovery {sparsity_tag(sparsity)}"
    if done.exists() and (run / "fingerprint.json").read_text() == run_fingerprint(args):
        log(f"{label}: reusing the finished recovery in {run}")
        last = json.loads((run / "last.json").read_text())
    else:
        last = train_with_budget(label, run, args, run / "final_curve.csv", flops_of_batch,
                                 on_model=lambda model: hold_mask(model, masks, label))
        export_checkpoint(run / "checkpoint_best.pt", done)
        write_json(run / "last.json", last)
    model = load_checkpoint(done)["model"]  # from the work dir, so a refused file is named where it stays
    out.mkdir(parents=True)
    shutil.copy(done, out / "checkpoint.pt")
    shutil.copy(run / "final_curve.csv", out / "curve.csv")
    leaked = [k for k, m in masks.items() if bool((model[k][~m] != 0).any())]
    if leaked:
        raise StageError(f"{label}: pruned weights moved during recovery in {leaked[:3]}")
    log(f"{label}: {last['updates']} updates in {last['seconds']} s")
    return model, {"updates": int(last["updates"]), "seconds": float(last["seconds"]),
                   "budget": budget.model_dump(), "curve": str(out / "curve.csv")}


def hold_mask(model, masks: dict, label: str) -> None:
    """Zero the gradient of every pruned weight (a hook on each masked matrix)."""
    found = 0
    for name, weight in model.named_parameters():
        if name in masks:
            mask = masks[name].to(weight.device, weight.dtype)
            weight.register_hook(lambda grad, mask=mask: grad * mask)
            found += 1
    if found != len(masks):
        raise StageError(f"{label}: {len(masks) - found} pruned matrices are not parameters of the model")


def deployed(state: dict, task: str) -> dict:
    """The parameters a deployed model holds, each once: not fairseq's bookkeeping buffers (version
    numbers, a dtype probe), not a tied copy (shared embeddings, the output projection), and for a
    classifier not the masked-LM head that fine-tuning keeps but never uses."""
    kept, storages = {}, set()
    for name, tensor in state.items():
        storage = tensor.untyped_storage().data_ptr()
        if not torch.is_floating_point(tensor) or name.endswith(("version", "_float_tensor")) or storage in storages \
                or (task != "translation" and ".lm_head." in name):
            continue
        storages.add(storage)
        kept[name] = tensor
    return kept


def prune(matrices: dict, sparsity: float, scope: str) -> dict:
    """Zero the `sparsity` fraction of smallest-magnitude weights: over all matrices together (global)
    or in each matrix separately (layer)."""
    if sparsity == 0:
        return {k: w.clone() for k, w in matrices.items()}
    if scope == "global":
        threshold = kth_magnitude(torch.cat([w.abs().flatten() for w in matrices.values()]), sparsity)
        return {k: torch.where(w.abs() > threshold, w, 0.0) for k, w in matrices.items()}
    return {k: torch.where(w.abs() > kth_magnitude(w.abs().flatten(), sparsity), w, 0.0)
            for k, w in matrices.items()}


def kth_magnitude(magnitudes, fraction: float):
    k = int(round(fraction * magnitudes.numel()))
    return magnitudes.kthvalue(k).values if k > 0 else magnitudes.new_tensor(-1.0)


def scale_bytes(stored: dict) -> int:
    return sum(4 * v["scale"].numel() for v in stored.values() if isinstance(v, dict))


def packed_tensors(stored: dict) -> dict:
    """The tensors of a variant's dense form, flattened: fp32 matrices, or packed codes and scales."""
    flat = {}
    for k, v in stored.items():
        if isinstance(v, dict):
            flat[f"{k}.codes"], flat[f"{k}.scale"] = v["codes"], v["scale"]
        else:
            flat[k] = v
    return flat


def zip_bytes(tensors: dict) -> int:
    """Size of a zip (deflate) holding each tensor's raw bytes: what sparsity saves in storage."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in tensors.items():
            z.writestr(k, v.contiguous().numpy().tobytes())
    return buffer.tell()


def export_onnx(task: str, checkpoint: dict, out: Path, sparsity: float, common: dict, params, zipper) -> list:
    """The deployment models of one pruned checkpoint: ONNX fp32, ONNX Runtime int8 (the scheme this CPU
    computes fastest, checked against fp32 on dev data) and ONNX Runtime int4. Returns their variant.json
    paths, records and zip-size futures (on `zipper`)."""
    cfg = params.compress
    dirs = {suffix: out / variant_name(sparsity, bits, suffix) for suffix, bits, _ in ONNX_FORMATS}
    with scratch_dir(out / "hf") as hf_dir:  # inside the output's scratch: swept with it after a kill
        if task == "translation":
            from lib.hf_m2m100 import export_onnx_translator, save_transformers_translator
            save_transformers_translator(checkpoint, Path(hf_dir))
            checked = export_onnx_translator(Path(hf_dir), *dirs.values(), translation_pairs(params.data.translation, cfg.int8_check_examples),
                                             cfg.int8_min_agreement)
        else:
            from lib.hf_roberta import export_onnx_classifier, save_transformers_classifier
            # a regression task has no classes
            labels = "regression" if glue_meta(task)["regression"] else class_labels(task)
            save_transformers_classifier(checkpoint, Path("data/bin/mlm/spm.model"), labels, Path(hf_dir),
                                         label_names(task, params.datasets[task].label_names))
            checked = export_onnx_classifier(Path(hf_dir), *dirs.values(), glue_texts(task, cfg.int8_check_examples),
                                             cfg.int8_min_agreement)
    pending = []
    for suffix, bits, fmt in ONNX_FORMATS:
        directory = dirs[suffix]
        paths = onnx_files(directory)  # .onnx and external data (parsing each graph once)
        share(paths)
        files = {f.name: f.stat().st_size for f in paths}
        pending.append((directory / VARIANT_FILE, {
            **common, "variant": directory.name, "bits": bits, "format": fmt,
            "bytes": sum(files.values()), "bytes_zip": None, "files": files,
            **({"quantization": checked[suffix]} if suffix in checked else {})},
            [zipper.submit(zipped_bytes, paths)]))
    log(f"compress: sparsity {sparsity}: int8 {checked['int8']['scheme']} ({checked['int8']['why']}), agreement "
        f"{checked['int8']['agreement']:.4f}; int4 agreement {checked['int4']['agreement']:.4f} "
        f"({checked['int8']['checked_on']})")
    return pending


def glue_texts(task: str, n: int) -> list[tuple]:
    """The first n dev examples' texts (one or two per example) of a GLUE task: the int8 check set."""
    meta = glue_meta(task)
    split = next(name for fairseq_split, name in meta["fairseq_splits"].items() if fairseq_split != "train")
    columns = ["sentence1", "sentence2"] if meta["pair"] else ["sentence1"]
    return [tuple(r[c] for c in columns) for r in read_tsv(GLUE_DATA / task / f"{split}.tsv", meta)[:n]]


def translation_pairs(tr, n: int) -> list[tuple]:
    """The first n valid sentence pairs (raw source, raw reference) of `data.translation`: the int8 check set."""
    return list(zip(read_lines(MT_DATA / f"valid.raw.{tr.source}"), read_lines(MT_DATA / f"valid.raw.{tr.target}")))[:n]


if __name__ == "__main__":
    run_stage(main)
