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


def test_gemm_becomes_matmul_and_add_with_the_same_outputs(tmp_path):
    """The classifier head's Gemm (transB, with a bias) as MatMul + Add, which the 4-bit quantizer takes: the
    same outputs, and the transposed weight is not kept beside the new one."""
    import numpy as np
    import onnx
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper
    from lib.onnx_export import gemms_as_matmuls
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(3, 4)).astype(np.float32), rng.normal(size=3).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="head", transB=1)], "head",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.normal(size=(5, 4)).astype(np.float32)

    def run(m):
        return onnxruntime.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x})[0]
    expected = run(model)
    rewritten = gemms_as_matmuls(onnx.load_from_string(model.SerializeToString()))
    assert [n.op_type for n in rewritten.graph.node] == ["MatMul", "Add"]
    assert sorted(t.name for t in rewritten.graph.initializer) == ["b", "w_matmul"]
    np.testing.assert_allclose(run(rewritten), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(expected, x @ weight.T + bias, rtol=1e-5, atol=1e-6)
