"""The weights of a fairseq variant (lib/variants.py): its matrices as fp32, or quantized symmetric uniform
k-bit and stored as packed k-bit codes plus scales, so that a k-bit variant's bytes on disk are honest; and a
variant loaded back into its source checkpoint."""
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
    levels = 2 ** (stored["bits"] - 1) - 1
    n = int(np.prod(stored["shape"]))
    codes = torch.from_numpy(unpack_bits(stored["codes"], stored["bits"], n).astype(np.int32) - levels)
    return codes.reshape(stored["shape"]).float() * stored["scale"]


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
    checkpoint["model"].update({k: dequantize(v) if isinstance(v, dict) else v for k, v in stored.items()})
    return checkpoint
