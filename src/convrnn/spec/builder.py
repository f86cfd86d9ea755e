"""Build a model from a spec: one layer per token, shapes tracked with each layer's output_shape only."""
# B batch, T time steps, C channels, H height, W width, F features, V classes/vocabulary
from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from convrnn.errors import SpecError
from convrnn.layers.base import Shape, Shaped
from convrnn.layers.conv import BatchNorm, Conv, Dense, Dropout, Embedding, Flatten, OneHot, Pool
from convrnn.layers.heads import Classify, Project, Regress
from convrnn.layers.mdlstm import MDLSTM2d, Collapse, SeparableLSTM2d, Tile
from convrnn.layers.recurrent import Recurrent
from convrnn.layers.slicing import Blocks, Columns
from convrnn.layers.time_distributed import TimeDistributed
from convrnn.spec.grammar import SCHEMAS, OpSchema, OpSpec, parse, register_schema
from convrnn.layers.base import ModelOutput

log = logging.getLogger(__name__)

KIND_TEXT = {
    "image": "an image (B, C, H, W)",
    "imseq": "an image sequence (B, T, C, H, W)",
    "seq": "a feature sequence (B, T, F)",
    "vector": "a vector (B, F)",
    "tokens": "token ids (B, T)",
}
_KIND_BY_RANK = {4: "image", 5: "imseq", 3: "seq", 2: "vector"}
IMAGES, SEQUENCE, FEATURES = ("image", "imseq"), ("seq",), ("seq", "vector")


def kind_of(shape: Sequence) -> str:
    """The kind of a (batched) shape by its rank; token ids are only ever the model input."""
    if len(shape) not in _KIND_BY_RANK:
        raise ValueError(f"no tensor kind has rank {len(shape)} (shape {tuple(shape)})")
    return _KIND_BY_RANK[len(shape)]


@dataclass
class BuildContext:
    """What a build function may look at besides its op and input shape."""

    spec: str
    num_outputs: Optional[int]
    kind: str
    layers: list = field(default_factory=list)

    @property
    def previous(self) -> Optional[nn.Module]:
        return self.layers[-1] if self.layers else None

    def error(self, op: OpSpec, message: str) -> SpecError:
        return SpecError(message, spec=self.spec, token=op.token, position=op.position)

    def outputs(self, op: OpSpec, given: Optional[int], what: str) -> int:
        """``given`` if set, else the builder's num_outputs, else a SpecError naming ``what``."""
        if given is not None:
            return given
        if self.num_outputs is None:
            raise self.error(op, f"{op.name} needs the number of {what}: write it in the token or pass num_outputs")
        return self.num_outputs

    def features(self, op: OpSpec, shape: Shape) -> int:
        if shape[-1] is None:
            raise self.error(op, f"{op.name} needs a known feature count, got shape {tuple(shape)}")
        return shape[-1]

    def feeds_from_bidirectional(self) -> bool:
        """True when the nearest earlier layer, looking past dropout and batch norm, is bidirectional."""
        for layer in reversed(self.layers):
            if isinstance(layer, (Dropout, BatchNorm)):
                continue
            return isinstance(layer, Recurrent) and layer.bidirectional
        return False


BuildFn = Callable[[OpSpec, Shape, BuildContext], nn.Module]


@dataclass(frozen=True)
class OpEntry:
    schema: OpSchema
    build: BuildFn
    accepts: Optional[tuple[str, ...]]


OPS: dict[str, OpEntry] = {}


def register_op(name: str, schema: OpSchema, build_fn: BuildFn, *, accepts: Optional[Sequence[str]] = None,
                replace: bool = False) -> None:
    """Add an op: its grammar ``schema`` and ``build_fn(opspec, input_shape, ctx) -> Shaped module``.

    ``accepts`` lists the input kinds (``image``, ``imseq``, ``seq``, ``vector``, ``tokens``) the op takes;
    others are rejected with a SpecError before ``build_fn`` runs. None accepts any kind.
    """
    if schema.name != name:
        raise ValueError(f"register_op: name {name!r} differs from schema name {schema.name!r}")
    if SCHEMAS.get(name) is not schema:
        register_schema(schema, replace=replace)
    OPS[name] = OpEntry(schema, build_fn, tuple(accepts) if accepts is not None else None)


def _builtin(name: str, accepts: Optional[Sequence[str]]) -> Callable[[BuildFn], BuildFn]:
    def decorate(fn: BuildFn) -> BuildFn:
        register_op(name, SCHEMAS[name], fn, accepts=accepts)
        return fn
    return decorate


def per_image(module: nn.Module, ctx: BuildContext) -> nn.Module:
    """Wrap an image layer in TimeDistributed when the input is an image sequence."""
    return TimeDistributed(module) if ctx.kind == "imseq" else module


@_builtin("blocks", ["image"])
def _blocks(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Blocks(op["width"], op["stride"])


@_builtin("cols", ["image"])
def _cols(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Columns()


@_builtin("conv", IMAGES)
def _conv(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    conv = Conv(shape[-3], op["filters"], op["kernel"], stride=op["s"],
                padding="valid" if op["valid"] else "same", activation=op["act"])
    return per_image(conv, ctx)


@_builtin("pool", IMAGES)
def _pool(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return per_image(Pool(op["kernel"], stride=op["s"], mode="avg" if op["avg"] else "max"), ctx)


@_builtin("bn", IMAGES + FEATURES)
def _bn(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return per_image(BatchNorm(shape[-3] if ctx.kind in IMAGES else ctx.features(op, shape)), ctx)


@_builtin("drop", IMAGES + FEATURES)
def _drop(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Dropout(op["p"])


@_builtin("flatten", IMAGES)
def _flatten(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Flatten()


@_builtin("dense", FEATURES)
def _dense(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Dense(ctx.features(op, shape), op["units"], activation=op["act"])


@_builtin("embed", ["tokens"])
def _embed(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Embedding(ctx.outputs(op, op["vocab"], "vocabulary entries (vocab=V)"), op["dim"])


@_builtin("onehot", ["tokens"])
def _onehot(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return OneHot(ctx.outputs(op, op["vocab"], "vocabulary entries (vocab=V)"))


def _recurrent(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    if op["dropout"] and op["layers"] == 1:
        raise ctx.error(op, f"{op.name}: dropout applies between stacked layers and needs layers >= 2; "
                            "use a drop:P token for dropout on the output")
    return Recurrent(ctx.features(op, shape), op["hidden"], mode=op.name, num_layers=op["layers"],
                     bidirectional=op["bi"], dropout=op["dropout"], weight_dropout=op["wdrop"])


register_op("lstm", SCHEMAS["lstm"], _recurrent, accepts=SEQUENCE)
register_op("gru", SCHEMAS["gru"], _recurrent, accepts=SEQUENCE)


@_builtin("cls", FEATURES)
def _cls(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Classify(ctx.features(op, shape), ctx.outputs(op, op["classes"], "classes"), pool=op["pool"],
                    bidirectional_split=ctx.kind == "seq" and ctx.feeds_from_bidirectional())


@_builtin("reg", FEATURES)
def _reg(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    outputs = op["outputs"] if op["outputs"] is not None else (ctx.num_outputs or 1)
    return Regress(ctx.features(op, shape), outputs, pool=op["pool"],
                   bidirectional_split=ctx.kind == "seq" and ctx.feeds_from_bidirectional())


@_builtin("ctc", SEQUENCE)
def _ctc(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Project(ctx.features(op, shape), ctx.outputs(op, op["symbols"], "symbols (including the blank)"))


@_builtin("lm", SEQUENCE)
def _lm(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    head = Project(ctx.features(op, shape), ctx.outputs(op, op["vocab"], "vocabulary entries"))
    if op["tie"]:
        embedding = next((m for m in reversed(ctx.layers) if isinstance(m, Embedding)), None)
        if embedding is None:
            raise ctx.error(op, "lm: 'tie' needs an earlier embed layer to share weights with")
        try:
            head.tie(embedding)
        except ValueError as err:
            raise ctx.error(op, f"lm: {err}; tying needs the last features to equal embed's D and N its vocab")
    return head


@_builtin("tile", ["image"])
def _tile(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Tile(*op["size"])


@_builtin("mdlstm", ["image"])
def _mdlstm(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return MDLSTM2d(shape[1], op["hidden"], directions=op["dirs"], combine="sum" if op["sum"] else "concat",
                    dropout=op["dropout"])


@_builtin("seplstm", ["image"])
@_builtin("lstm2d", ["image"])
def _seplstm(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return SeparableLSTM2d(shape[1], op["hidden"], combine="sum" if op["sum"] else "concat")


@_builtin("collapse", ["image"])
def _collapse(op: OpSpec, shape: Shape, ctx: BuildContext) -> nn.Module:
    return Collapse(op["mode"])


def _kind_hint(kind: str, accepts: tuple[str, ...]) -> str:
    if "seq" in accepts and kind == "image":
        return "; turn the image into a sequence first with cols, or blocks:W ... flatten"
    if "seq" in accepts and kind == "imseq":
        return "; add flatten first"
    if kind == "tokens":
        return "; token ids enter through embed or onehot"
    return ""


def _tracing() -> bool:
    """Whether the model is being compiled, traced or exported: value checks would break the graph."""
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _vocabulary(layer: nn.Module) -> Optional[int]:
    if isinstance(layer, Embedding):
        return layer.embedding.num_embeddings
    if isinstance(layer, OneHot):
        return layer.num_classes
    return None


def _check_input_shape(input_shape: Sequence) -> tuple:
    shape = tuple(None if s is None else int(s) for s in input_shape)
    if len(shape) not in (1, 3, 4) or any(s is not None and s < 1 for s in shape):
        raise SpecError(f"input_shape must be (C, H, W), (T, C, H, W) or (T,) with positive sizes "
                        f"(None for a variable size), got {tuple(input_shape)}")
    return shape


def _build_layers(spec: str, input_shape: tuple, num_outputs: Optional[int]) -> tuple[list, list[str], list[Shape]]:
    ops = parse(spec)
    shape: Shape = (None, *input_shape)
    ctx = BuildContext(spec, num_outputs, "tokens" if len(input_shape) == 1 else kind_of(shape))
    names, shapes = [], []
    for op in ops:
        entry = OPS.get(op.name)
        if entry is None:
            raise ctx.error(op, f"op {op.name!r} has a grammar schema but no build function (use register_op)")
        if entry.accepts is not None and ctx.kind not in entry.accepts:
            wanted = " or ".join(KIND_TEXT[k] for k in entry.accepts)
            raise ctx.error(op, f"{op.name} expects {wanted}, got {KIND_TEXT[ctx.kind]} of shape {shape}"
                                + _kind_hint(ctx.kind, entry.accepts))
        try:
            module = entry.build(op, shape, ctx)
            if not isinstance(module, Shaped):
                raise TypeError(f"build function for {op.name!r} returned {type(module).__name__}, not a Shaped layer")
            shape = tuple(module.output_shape(shape))
            ctx.kind = kind_of(shape)
        except SpecError:
            raise
        except ValueError as err:
            raise ctx.error(op, f"{op.name}: {err}") from None
        ctx.layers.append(module)
        names.append(op.token)
        shapes.append(shape)
    return ctx.layers, names, shapes


class SpecModel(nn.Module):
    """A model built from a spec string: the layers in order, their tokens, and the spec itself.

    Shape:
        - Input: ``(B, *input_shape)``; token ids are int64, images and sequences float.
        - Output: whatever the last layer gives, e.g. ``(B, V)`` for ``cls`` or ``(B, T, V)`` for ``ctc``/``lm``.
    """

    def __init__(self, spec: str, input_shape: Sequence, num_outputs: Optional[int] = None):
        super().__init__()
        if num_outputs is not None:
            if isinstance(num_outputs, bool) or not isinstance(num_outputs, numbers.Integral) or num_outputs < 1:
                raise SpecError(f"num_outputs must be a positive integer (or None), got {num_outputs!r}")
            num_outputs = int(num_outputs)
        self.spec, self.input_shape, self.num_outputs = spec, _check_input_shape(input_shape), num_outputs
        layers, self.names, shapes = _build_layers(spec, self.input_shape, num_outputs)
        self.layers = nn.ModuleList(layers)
        self.output_shape = shapes[-1]
        self.num_stateful = sum(1 for layer in layers if layer.stateful)

    @classmethod
    def from_config(cls, config: dict) -> "SpecModel":
        """Rebuild from ``config()``'s dict (weights not included)."""
        return cls(config["spec"], tuple(config["input_shape"]), config.get("num_outputs"))

    def config(self) -> dict:
        return {"spec": self.spec, "input_shape": list(self.input_shape), "num_outputs": self.num_outputs}

    def _check_input(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor input, got {type(x).__module__}.{type(x).__name__}"
                            + ("; convert it with torch.from_numpy(...).float()" if hasattr(x, "__array__") else ""))
        expected = self.input_shape
        actual = tuple(x.shape[1:])
        if len(actual) != len(expected) or any(e is not None and e != a for e, a in zip(expected, actual)):
            shown = tuple("?" if e is None else e for e in expected)
            raise ValueError(f"expected input of shape (B, {', '.join(map(str, shown))}), got {tuple(x.shape)}")
        if len(expected) == 1:  # token ids
            if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
                raise ValueError(f"expected integer token ids (int64), got {x.dtype}")
            vocab = _vocabulary(self.layers[0])
            if vocab is not None and x.numel() and x.device.type == "cpu" and not _tracing():
                low, high = int(x.min()), int(x.max())
                if low < 0 or high >= vocab:
                    bad = low if low < 0 else high
                    raise ValueError(f"token id {bad} is outside this model's vocabulary of {vocab} (ids 0 to {vocab - 1})")
            return
        if not x.is_floating_point():
            raise ValueError(f"expected a floating-point input (float32, like the model's weights), got {x.dtype}; "
                             "convert it with .float() (and scale it the way the training data was)")
        weight = next(self.parameters(), None)
        if (weight is not None and weight.is_floating_point() and x.dtype != weight.dtype
                and not torch.is_autocast_enabled(x.device.type)):
            raise ValueError(f"expected a {weight.dtype} input (the dtype of the model's weights), got {x.dtype}; "
                             f"convert it with .to({weight.dtype})")

    def _check_lengths(self, x: torch.Tensor, lengths) -> Optional[torch.Tensor]:
        """``lengths`` as an int64 tensor, one per batch row, each within the input's time axis (width W
        of an image, T otherwise); a list or tuple is taken too."""
        if lengths is None:
            return None
        if not isinstance(lengths, torch.Tensor):
            try:
                lengths = torch.as_tensor(lengths)
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"lengths must be a 1-D tensor of integers, got {type(lengths).__name__}") from None
        if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
            raise ValueError(f"lengths must be integers (int64), got {lengths.dtype}")
        if lengths.dim() != 1 or lengths.shape[0] != x.shape[0]:
            raise ValueError(f"lengths must have one entry per batch row ({x.shape[0]}), got shape {tuple(lengths.shape)}")
        axis = 3 if x.dim() == 4 else 1
        if lengths.numel() and lengths.device.type == "cpu" and not _tracing():  # no host sync for GPU lengths
            steps = x.shape[axis]
            low, high = int(lengths.min()), int(lengths.max())
            if low < 1 or high > steps:
                what = "width W" if axis == 3 else "length T"
                raise ValueError(f"lengths must lie in [1, {steps}] (the input's {what}), got {lengths.tolist()}")
        return lengths.long()

    def _size_problem(self, shape: tuple) -> Optional[str]:
        """Why an input of ``shape`` is too small for some layer, or None: walks the layers' shape rules
        with the concrete sizes (only after a layer has failed, so it costs nothing on the normal path)."""
        given = shape
        for name, layer in zip(self.names, self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as err:
                return f"an input of shape {given} is too small for layer {name!r} of this model: {err}"
        return None

    def run(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
            state: Optional[list] = None, *, need_state: bool = True) -> ModelOutput:
        """Run every layer, passing lengths to the layers that use them and state to stateful ones.

        ``state`` has one entry per stateful layer (None entries start fresh); the returned
        ``ModelOutput.state`` has the same layout, and ``lengths`` are valid along the output's time axis.
        ``need_state=False`` lets recurrent layers skip computing the state after each sequence's own
        last step (its entries may then be None), which is faster on the CPU for unequal lengths.
        """
        self._check_input(x)
        lengths = self._check_lengths(x, lengths)
        if state is not None and len(state) != self.num_stateful:
            raise ValueError(f"expected a state list with {self.num_stateful} entries (one per stateful layer), "
                             f"got {len(state)}")
        states_in = list(state) if state is not None else [None] * self.num_stateful
        states_out = []
        input_shape = tuple(x.shape)
        try:
            for layer in self.layers:
                if layer.stateful:
                    x, layer_state = layer(x, lengths, states_in[len(states_out)], need_state=need_state)
                    states_out.append(layer_state)
                elif layer.uses_lengths:
                    x = layer(x, lengths)
                else:
                    x = layer(x)
                lengths = layer.output_lengths(lengths)
        except RuntimeError:
            problem = None if _tracing() else self._size_problem(input_shape)
            if problem is None:
                raise
            raise ValueError(problem) from None
        return ModelOutput(x, lengths, states_out)

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.run(x, lengths, need_state=False).y

    def summary(self, batch_size: int = 1, seq_len: Optional[int] = None) -> Summary:
        """Per-layer output shapes and parameters, and an estimate of training memory (docs/spec.md)."""
        return summarize(self, batch_size=batch_size, seq_len=seq_len)


@dataclass(frozen=True)
class SummaryRow:
    index: int
    token: str
    layer: str
    shape: Shape  # with the batch first; None where the size is known only at run time
    params: int
    trainable_params: int


@dataclass(frozen=True)
class Summary:
    """Rows per layer, parameter totals and the training-memory estimate (bytes) for ``batch_size``."""

    spec: str
    input_shape: Shape
    batch_size: int
    seq_len: int
    rows: list
    params: int
    trainable_params: int
    memory: dict  # weights, gradients, optimizer (Adam's two moments), activations

    @property
    def memory_bytes(self) -> int:
        return sum(self.memory.values())

    def __str__(self) -> str:
        header = ("#", "token", "layer", "output shape", "params")
        table = [header] + [(str(r.index), r.token, r.layer, _shape_text(r.shape), f"{r.params:,}") for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(header))]
        lines = [f"spec: {self.spec}", f"input: {_shape_text(self.input_shape)}"]
        for row in table:
            cells = [cell.ljust(w) if i < 4 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells).rstrip())
        parts = " + ".join(f"{name} {_bytes_text(size)}" for name, size in self.memory.items())
        lines.append(f"params: {self.params:,} (trainable {self.trainable_params:,})")
        variable = any(size is None for size in self.input_shape)
        taken = f" (unknown sizes taken as {self.seq_len})" if variable else ""
        lines.append(f"training memory, batch {self.batch_size}{taken}: ~{_bytes_text(self.memory_bytes)} = {parts}")
        return "\n".join(lines)


def _shape_text(shape: Shape) -> str:
    return "(" + ", ".join("?" if s is None else str(s) for s in shape) + ")"


def _bytes_text(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _numel(shape: Shape) -> int:
    total = 1
    for size in shape:
        total *= size
    return total


def _layer_name(layer: nn.Module) -> str:
    if isinstance(layer, TimeDistributed):
        return f"TimeDistributed({type(layer.module).__name__})"
    return type(layer).__name__


def summarize(model: SpecModel, *, batch_size: int = 1, seq_len: Optional[int] = None) -> Summary:
    """Walk the layers' output_shape twice: with unknown sizes kept (rows) and set to seq_len (memory)."""
    seq_len = seq_len or 32
    shape: Shape = (batch_size, *model.input_shape)
    concrete: Shape = (batch_size, *(seq_len if s is None else s for s in model.input_shape))
    element = next((p.element_size() for p in model.parameters()), torch.tensor([], dtype=torch.get_default_dtype()).element_size())
    activations = float(_numel(concrete))  # the input batch
    workspace = 0.0  # the largest backward buffers of one layer: alive, beside everything kept, during its backward
    seen: set[int] = set()
    rows = []
    for index, (layer, token) in enumerate(zip(model.layers, model.names)):
        shape, concrete = tuple(layer.output_shape(shape)), tuple(layer.output_shape(concrete))
        params = trainable = 0
        for p in layer.parameters():  # tied weights count once, in the first layer that has them
            if id(p) not in seen:
                seen.add(id(p))
                params += p.numel()
                trainable += p.numel() if p.requires_grad else 0
        activations += _numel(concrete) * float(getattr(layer, "activation_factor", 1.0))
        workspace = max(workspace, _numel(concrete) * float(getattr(layer, "backward_workspace", 1.0)))
        rows.append(SummaryRow(index, token, _layer_name(layer), shape, params, trainable))
    total = sum(r.params for r in rows)
    total_trainable = sum(r.trainable_params for r in rows)
    memory = {"weights": total * element, "gradients": total_trainable * element,
              "optimizer": 2 * total_trainable * element, "activations": int((activations + workspace) * element)}
    return Summary(model.spec, (batch_size, *model.input_shape), batch_size, seq_len, rows, total,
                   total_trainable, memory)


def build_model(spec: str, input_shape: Sequence, num_outputs: Optional[int] = None) -> SpecModel:
    """Parse ``spec`` and build its layers for inputs of ``input_shape`` (per sample, no batch)."""
    model = SpecModel(spec, input_shape, num_outputs)
    log.debug("built %r: %d layers, output %s", spec, len(model.layers), model.output_shape)
    return model
