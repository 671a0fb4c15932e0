"""python -m bench.variant_storage [--layers 24] [--hidden 768] [--sparsities S ...] [--bits B ...]: bytes on
disk of a pruned fairseq variant's weights.pt against the bytes_zip of its matrices (issue 32: at most 1.5x).

The matrices are random normal with the shapes of a Transformer encoder's layers (per layer 4 of H x H, the
FFN's 4H x H and H x 4H; default the paper's 24 layers x 768), pruned globally at each sparsity, quantized
per channel at each k < 32, and stored as stages.compress stores them: each matrix in the smaller of its
dense and sparse forms (lib/variant_weights.compact). bytes_zip is stages.compress's: the deflate size of
the dense form, what the non-zeros need (a real variant's bytes_zip also counts the zip of the embeddings
and other weights that its file leaves out, so its own ratio is lower). Also timed: storing (compact +
torch.save, into the page cache) and loading (torch.load + lib/variant_weights.dense), beside the same for
the dense form (how variants were stored before); every load is checked to give exactly the dense form's
weights. Prints a table; the files go to a temporary directory."""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

from lib.variant_weights import compact, dense, quantize, tensor_bytes
from stages.compress import packed_tensors, prune, zip_bytes

TARGET = 1.5  # file bytes / bytes_zip
COLUMNS = ["sparsity", "bits", "sparse matrices", "dense MB", "file MB", "zip MB", "file / zip", "target",
           "store s", "load s", "dense store s", "dense load s", "same weights"]


def layer_matrices(hidden: int, layers: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    shapes = [(hidden, hidden)] * 4 + [(4 * hidden, hidden), (hidden, 4 * hidden)]
    return {f"layers.{i}.{j}.weight": torch.randn(shape, generator=generator)
            for i in range(layers) for j, shape in enumerate(shapes)}


def store_and_load(stored: dict, path: Path, form) -> tuple[float, float, dict, dict]:
    """Seconds to store each matrix in `form` and to load them all back as fp32; what the file holds and
    what was loaded."""
    started = time.perf_counter()
    with open(path, "wb") as f:
        torch.save({k: form(v) for k, v in stored.items()}, f)
    stored_s, started = time.perf_counter() - started, time.perf_counter()
    on_disk = torch.load(path, weights_only=True)
    loaded = {k: dense(v) for k, v in on_disk.items()}
    return stored_s, time.perf_counter() - started, on_disk, loaded


def measure(stored: dict, path: Path) -> dict:
    """One variant's dense form (fp32 matrices or quantize's dicts) stored as stages.compress stores it,
    measured and loaded back; and, for comparison, stored dense as variants were before."""
    dense_store_s, dense_load_s, _, _ = store_and_load(stored, path, lambda v: v)
    store_s, load_s, on_disk, loaded = store_and_load(stored, path, compact)
    file_bytes, zipped = path.stat().st_size, zip_bytes(packed_tensors(stored))
    return {"sparse matrices": f"{sum(isinstance(v, dict) and 'mask' in v for v in on_disk.values())}/{len(on_disk)}",
            "dense MB": sum(tensor_bytes(v) for v in stored.values()) / 1e6, "file MB": file_bytes / 1e6,
            "zip MB": zipped / 1e6, "file / zip": file_bytes / zipped,
            "target": "pass" if file_bytes <= TARGET * zipped else "MISS",
            "store s": store_s, "load s": load_s, "dense store s": dense_store_s, "dense load s": dense_load_s,
            "same weights": all(torch.equal(loaded[k], dense(v)) for k, v in stored.items())}


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.variant_storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=24)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    parser.add_argument("--bits", type=int, nargs="+", default=[32, 4, 6, 8])
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    matrices = layer_matrices(args.hidden, args.layers)
    print(f"{len(matrices)} matrices, {sum(w.numel() for w in matrices.values()):,} weights "
          f"({args.layers} layers x {args.hidden}), pruned globally; target: file <= {TARGET} x zip\n")
    print("| " + " | ".join(COLUMNS) + " |\n|" + " --- |" * len(COLUMNS), flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for sparsity in args.sparsities:
            pruned = prune(matrices, sparsity, "global")
            for bits in args.bits:
                stored = pruned if bits == 32 else {k: quantize(w, bits, "channel")[0] for k, w in pruned.items()}
                row = {"sparsity": sparsity, "bits": bits, **measure(stored, Path(tmp) / "weights.pt")}
                rows.append(row)
                print("| " + " | ".join(f"{row[c]:.3g}" if isinstance(row[c], float) else str(row[c])
                                        for c in COLUMNS) + " |", flush=True)
    missed = [f"s{r['sparsity']} {r['bits']} bits" for r in rows if r["target"] == "MISS"]
    print(f"\n{len(rows) - len(missed)}/{len(rows)} within {TARGET}x"
          + (f"; missed: {', '.join(missed)}" if missed else ""))
    return rows


if __name__ == "__main__":
    main()
