"""The weights of a fairseq variant (lib/variants.py): its matrices as fp32, or quantized symmetric uniform
k-bit and stored as packed k-bit codes plus scales, so that a k-bit variant's bytes on disk are honest; each
matrix on disk dense or, where smaller, sparse (a bitmask and the non-zeros only), so that a pruned variant's
bytes on disk follow its non-zeros; and a variant loaded back into its source checkpoint."""
import json
from pathlib import Path

import numpy as np
import torch

from lib.checkpoints import load_checkpoint
from lib.errors import StageError
from lib.variants import VARIANT_FILE, WEIGHTS_FILE, is_onnx


def quantize(weight, bits: int, granularity: str) -> tuple[dict, int]:
    """Symmetric uniform quantization: codes in [-(2^(k-1)-1), 2^(k-1)-1] and a scale per matrix or per
    output row; codes are packed k bits each. Returns what is stored and the number of zero codes."""
    levels = 2 ** (bits - 1) - 1
    peak = weight.abs().amax(dim=1, keepdim=True) if granularity == "channel" else weight.abs().max()
    scale = torch.where(peak > 0, peak / levels, torch.ones_like(peak))
    codes = torch.clamp(torch.round(weight / scale), -levels, levels).to(torch.int32)
    stored = {"codes": pack_bits((codes + levels).numpy().ravel(), bits), "scale": scale.float(),
              "bits": bits, "shape": list(weight.shape)}
    return stored, int((codes == 0).sum())


def dequantize(stored: dict):
    """The fp32 matrix of quantize's codes and scales: every code stored, or (compact's sparse form) only the
    non-zero ones, in the order of their bits in the mask."""
    bits, levels, n = stored["bits"], 2 ** (stored["bits"] - 1) - 1, int(np.prod(stored["shape"]))
    if "mask" in stored:
        nonzero = mask_bits(stored, n)
        unsigned = np.full(n, levels, np.int64)  # codes are stored offset by `levels`: this is code 0
        unsigned[nonzero] = unpack_bits(stored["codes"], bits, int(nonzero.sum()))
    else:
        unsigned = unpack_bits(stored["codes"], bits, n)
    codes = torch.from_numpy(unsigned.astype(np.int32) - levels)
    return codes.reshape(stored["shape"]).float() * stored["scale"]


def compact(stored):
    """One matrix as weights.pt holds it: its dense form (an fp32 tensor, or quantize's dict) or, where that
    is smaller, its sparse form: a bitmask of the non-zero positions (np.packbits, 1 bit a weight, row-major)
    and the non-zeros only (fp32 "values", or the non-zero "codes" packed k bits each, beside the scales).
    A pruned matrix's bytes then follow its non-zeros: sparse is the smaller below ~97% density in fp32 and
    below 75% at 4 bits. Plain tensors, ints and lists, which the weights-only loader accepts."""
    if isinstance(stored, dict):
        n, bits = int(np.prod(stored["shape"])), stored["bits"]
        unsigned = unpack_bits(stored["codes"], bits, n)
        nonzero = unsigned != 2 ** (bits - 1) - 1
        sparse = {**stored, "codes": pack_bits(unsigned[nonzero], bits)}
    else:
        # non-zero bits rather than values: a -0.0 stays a stored value, so loading gives back every bit
        nonzero = (stored.contiguous().view(torch.int32) != 0).flatten().numpy()
        sparse = {"values": stored.flatten()[torch.from_numpy(nonzero)], "shape": list(stored.shape)}
    sparse["mask"] = torch.from_numpy(np.packbits(nonzero))
    return sparse if tensor_bytes(sparse) < tensor_bytes(stored) else stored


def dense(stored):
    """The fp32 matrix that a stored one (any form quantize or compact gives) stands for."""
    if not isinstance(stored, dict):
        return stored
    if "values" not in stored:
        return dequantize(stored)
    n = int(np.prod(stored["shape"]))
    matrix = torch.zeros(n, dtype=stored["values"].dtype)
    return matrix.masked_scatter_(torch.from_numpy(mask_bits(stored, n)), stored["values"]).reshape(stored["shape"])


def mask_bits(stored: dict, n: int) -> np.ndarray:
    return np.unpackbits(stored["mask"].numpy(), count=n).astype(bool)


def tensor_bytes(stored) -> int:
    return sum(t.nbytes for t in (stored.values() if isinstance(stored, dict) else [stored])
               if isinstance(t, torch.Tensor))


def pack_bits(values: np.ndarray, bits: int):
    """Unsigned integers < 2**bits, packed `bits` bits each (big-endian) into a uint8 tensor."""
    as_bits = np.unpackbits(values.astype(">u2").view(np.uint8).reshape(-1, 2), axis=1)[:, 16 - bits:]
    return torch.from_numpy(np.packbits(as_bits.ravel()))


def unpack_bits(packed, bits: int, n: int) -> np.ndarray:
    as_bits = np.unpackbits(packed.numpy())[: n * bits].reshape(n, bits)
    return as_bits @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))  # big-endian bits -> integers


def load_variant(variant: Path) -> dict:
    """A fairseq variant as a full fairseq checkpoint dict (the source checkpoint with the variant's matrices)."""
    described = json.loads((variant / VARIANT_FILE).read_text())
    if is_onnx(described["format"]):
        raise StageError(f"{variant}: an ONNX variant; load it with optimum.onnxruntime")
    checkpoint = load_checkpoint(Path(described["source"]))
    stored = load_checkpoint(variant / WEIGHTS_FILE)
    checkpoint["model"].update({k: dense(v) for k, v in stored.items()})
    return checkpoint
