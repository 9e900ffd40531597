"""The networks as other tools take them: traced (``torch.jit.trace``, the legacy ONNX exporter) with
shapes that stay symbolic where they vary and constant where the weights fix them."""
import io

import pytest
import torch

from net.blocks import LayerNorm
from net.presets import build_model


def _traced_graph(module: torch.nn.Module, x: torch.Tensor) -> torch._C.Graph:
    with torch.no_grad():
        return torch.jit.trace(module.eval(), x, check_trace=False).inlined_graph


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_layernorm_normalises_over_a_constant_width_when_traced(kind):
    # The legacy ONNX exporter with dynamic_axes refuses a layer_norm shape read off the input ("not constant").
    graph = _traced_graph(LayerNorm(8, kind), torch.rand(1, 8, 4, 4))
    assert not [n for n in graph.nodes() if n.kind() == "aten::size"]


def test_layernorm_exports_to_onnx_with_dynamic_sides():
    pytest.importorskip("onnx")
    buffer = io.BytesIO()
    torch.onnx.export(LayerNorm(8).eval(), (torch.rand(1, 8, 4, 4),), buffer, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "batch", 2: "height", 3: "width"}})
    assert buffer.getvalue()


@pytest.mark.parametrize("backbone", ["BaryNet", "PromptIR"])
def test_trace_passes_its_own_check_and_computes_the_forward(backbone):
    # torch.jit.trace re-traces under no_grad to check the graph: a grad-mode-dependent op failed that check.
    torch.manual_seed(0)
    model = build_model(backbone, "tiny", num_blocks=[1, 1, 1, 1]).eval()
    x = torch.rand(1, 3, 16, 16)
    traced = torch.jit.trace(model, x, strict=False)
    other = torch.rand(2, 3, 24, 16)
    with torch.no_grad():
        want, got = model(other), traced(other)
    torch.testing.assert_close(got[0] if isinstance(got, tuple) else got, want[0] if isinstance(want, tuple) else want)
