"""The int8 scheme follows the CPU's instruction sets, and a scheme that loses agreement with fp32 falls
back to u8 x u8 only where that agrees more (the models themselves: tests/test_hf_roberta.py, test_hf_m2m100.py)."""
import pytest

from lib.onnx_export import FALLBACK, checked_int8, int8_scheme


@pytest.mark.parametrize("flags, scheme", [
    (["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], "u8s8"),   # AMD EPYC (Zen 4)
    (["avx2", "avx512f", "avx512_vnni", "amx_bf16", "amx_int8"], "u8s8"),  # Intel Sapphire Rapids
    (["avx2", "avx512f"], "u8s8-reduce-range"),                    # Skylake-SP: no VNNI
    (["avx2"], "u8s8-reduce-range"),
    ([], "u8u8")])
def test_scheme_follows_the_instruction_sets(flags, scheme):
    assert int8_scheme(flags)[0] == scheme


def run(agreements: dict, min_agreement: float, flags: list):
    """checked_int8 with a fake quantizer whose models agree with fp32 as `agreements` says."""
    written = []
    checked = checked_int8(written.append, lambda: agreements[written[-1]], min_agreement, flags)
    return checked, written


def test_a_scheme_that_agrees_is_kept_without_trying_another():
    checked, written = run({"u8s8": 0.99}, 0.97, ["avx2", "avx512_vnni"])
    assert written == ["u8s8"] and checked["scheme"] == "u8s8" and checked["tried"] == {"u8s8": 0.99}
    assert checked["isa"] == ["avx2", "avx512_vnni"] and checked["agreement"] == 0.99


def test_a_saturating_scheme_falls_back_to_u8u8():
    checked, written = run({"u8s8-reduce-range": 0.60, FALLBACK: 0.986}, 0.97, ["avx2"])
    assert written == ["u8s8-reduce-range", FALLBACK] and checked["scheme"] == FALLBACK
    assert checked["tried"] == {"u8s8-reduce-range": 0.6, FALLBACK: 0.986} and "60.00%" in checked["why"]


def test_the_fallback_is_kept_only_where_it_agrees_more():
    checked, written = run({"u8s8": 0.95, FALLBACK: 0.94}, 0.97, ["avx512_vnni"])
    assert written == ["u8s8", FALLBACK, "u8s8"]  # the faster model is written again
    assert checked["scheme"] == "u8s8" and checked["agreement"] == 0.95
