"""ONNX export of a trained run, and greedy generation from an exported language model.

Every model exports its forward pass ``x -> y`` with the batch and every size that is ``None`` in
its input shape (sequence length T, line width W) as dynamic axes. A language model (token input
and recurrent layers) exports *one step* instead: ``(x, state...) -> (logits, state...)`` with the
recurrent state as explicit inputs and outputs, so generation can run outside PyTorch
(:func:`onnx_generate` needs only numpy and onnxruntime).

Packed sequences do not export: the graph runs every sequence to the full length of its batch
(``lengths=None``), which is what inference on one item (or equal-length items) does anyway.
The legacy TorchScript exporter (``dynamo=False``) is used: it exports ``nn.LSTM``/``nn.GRU`` with
dynamic batch and time as single ONNX LSTM/GRU nodes.

Shape:
    images ``x`` ``(B, C, H, W)`` (W dynamic for text lines), image sequences ``(B, T, C, H, W)``,
    tokens ``(B, T)`` int64; LM state per LSTM layer ``h``, ``c`` each ``(L*D, B, H)`` (GRU: ``h``).
"""
# B batch, T time steps, C channels, H height, W width, L layers, D directions, V vocabulary
from __future__ import annotations

import io
import json
import logging
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from convrnn.errors import ConfigError
from convrnn.files import atomic_write_bytes, check_writable

log = logging.getLogger(__name__)

OPSET = 17
EXAMPLE_SIZE = {"tokens": 8, "time": 5, "width": 96}  # example sizes for the dynamic axes while tracing


class LMStep(nn.Module):
    """``forward(x, *state) -> (logits, *state)``: a language model's step with flat explicit state."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.recurrent = [layer for layer in model.layers if getattr(layer, "stateful", False)]
        for layer in self.recurrent:
            if not hasattr(layer, "rnn"):
                raise ConfigError(f"export: stateful layer {type(layer).__name__} has no ONNX step form")

    def state_names(self) -> list[str]:
        names = []
        for i, layer in enumerate(self.recurrent):
            names += [f"h{i}", f"c{i}"] if layer.mode == "lstm" else [f"h{i}"]
        return names

    def zero_state(self, batch_size: int) -> list[torch.Tensor]:
        out = []
        for layer in self.recurrent:
            shape = (layer.num_layers * layer.num_directions, batch_size, layer.hidden_size)
            out += [torch.zeros(shape)] * (2 if layer.mode == "lstm" else 1)
        return out

    def forward(self, x: torch.Tensor, *flat: torch.Tensor):
        state, k = [], 0
        for layer in self.recurrent:
            if layer.mode == "lstm":
                state.append((flat[k], flat[k + 1]))
                k += 2
            else:
                state.append(flat[k])
                k += 1
        out = self.model.run(x, None, state)
        flat_out = []
        for s in out.state:
            flat_out += list(s) if isinstance(s, tuple) else [s]
        return (out.y, *flat_out)


def _example_and_axes(input_shape: tuple) -> tuple[torch.Tensor, dict[int, str]]:
    """An example input (batch 2) and its dynamic axes {axis: name}."""
    axes, sizes = {0: "batch"}, [2]
    for i, size in enumerate(input_shape, start=1):
        if size is None:
            kind = "tokens" if len(input_shape) == 1 else ("time" if i == 1 else "width")
            axes[i] = "time" if kind in ("tokens", "time") else "width"
            sizes.append(EXAMPLE_SIZE[kind])
        else:
            sizes.append(size)
    if len(input_shape) == 1:
        return torch.zeros(sizes, dtype=torch.int64), axes
    return torch.rand(sizes), axes


def is_language_model(model: nn.Module) -> bool:
    return tuple(model.input_shape) == (None,) and getattr(model, "num_stateful", 0) > 0


def export_onnx(model: nn.Module, path: str | Path, *, metadata: Optional[dict] = None) -> Path:
    """Write ``model`` (a SpecModel) to ``path`` as ONNX, atomically (:func:`convrnn.files.atomic_write_bytes`)."""
    import onnx

    path = Path(path)
    model = model.cpu().eval()
    fixed = sorted({type(m).__name__ for m in model.modules() if getattr(m, "exports_with_any_size", True) is False})
    if fixed and any(s is None for s in model.input_shape):
        raise ConfigError(f"export: {', '.join(fixed)} layers loop over the input in Python, so an ONNX graph would "
                          f"only run at the one size it was traced at, and this model's input size varies "
                          f"{tuple(model.input_shape)}; use the PyTorch checkpoint (convrnn predict) instead")
    check_writable(path)  # a folder, special file or unwritable folder there fails before the export
    x, axes = _example_and_axes(tuple(model.input_shape))
    if is_language_model(model):
        step = LMStep(model)
        names = step.state_names()
        args = (x, *step.zero_state(x.shape[0]))
        inputs, outputs = ["x", *names], ["logits", *[f"{n}_out" for n in names]]
        dynamic = {"x": axes, "logits": {0: "batch", 1: "time"},
                   **{n: {1: "batch"} for n in names}, **{f"{n}_out": {1: "batch"} for n in names}}
        module = step
    else:
        with torch.no_grad():
            out = model.run(x)
        joint = out.members is not None  # a CTC ensemble: its members are decoded jointly, not their mean
        module, args, inputs = _Forward(model, joint), (x,), ["x"]
        outputs = ["y", "members"] if joint else ["y"]
        out_axes = {0: "batch"}
        if out.y.dim() >= 3 and len(axes) > 1:
            out_axes[1] = "time"  # per-step outputs follow the variable input size
        dynamic = {"x": axes, "y": out_axes}
        if joint:  # (K, B, T, V)
            dynamic["members"] = {k + 1: name for k, name in out_axes.items()}
    module.eval()  # the exporter restores the wrapper's mode afterwards, and with it the model's
    graph = io.BytesIO()  # exported in memory: only the finished file reaches the disk, atomically
    with torch.no_grad(), warnings.catch_warnings():
        # Expected while tracing, and harmless here: the input shape check turns a tensor size into
        # a Python bool (the graph keeps the dynamic axes); the exporter's caution about RNNs with a
        # batch other than 1 concerns packed variable lengths, which are not exported (every
        # sequence of a batch runs to its full length; see the module docstring); and the legacy
        # exporter is chosen on purpose (it writes LSTM/GRU as single ONNX nodes).
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"(torch\.onnx|convrnn\.export)")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
        torch.onnx.export(module, args, graph, input_names=inputs, output_names=outputs,
                          dynamic_axes=dynamic, opset_version=OPSET, dynamo=False)
    proto = onnx.load_model_from_string(graph.getvalue())
    for key, value in {"convrnn_spec": model.spec, **(metadata or {})}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    # the shared safe writer: follows a symlink, refuses a folder/FIFO/device, and turns a read-only
    # or missing folder into one WriteError with no temporary file left behind
    atomic_write_bytes(path, proto.SerializeToString())
    log.debug("exported %s (%s) to %s", model.spec, "LM step" if is_language_model(model) else "forward", path)
    return path


class _Forward(nn.Module):
    """``x -> y``, or ``x -> (y, members)`` for an ensemble whose members' outputs are decoded jointly."""

    def __init__(self, model: nn.Module, members: bool = False):
        super().__init__()
        self.model, self.members = model, members

    def forward(self, x: torch.Tensor):
        out = self.model.run(x)
        return (out.y, out.members) if self.members else out.y


def export_run(run: str, out: Optional[str] = None, fmt: str = "onnx") -> Path:
    """Export a run's best checkpoint (or a checkpoint file); default ``RUN/model.onnx``."""
    return export_run_steps(run, out, fmt)[0]


def export_run_steps(run: str, out: Optional[str] = None, fmt: str = "onnx") -> tuple[Path, bool]:
    """:func:`export_run`, and whether the graph is one step of a language model with its state."""
    from convrnn.infer.run import load_run

    if fmt != "onnx":
        raise ConfigError(f"export format: expected onnx, got {fmt!r}")
    if out is not None:
        from convrnn.train.rundir import run_files
        check_writable(out, keep=run_files(run))  # a bad --out (or a run's own file) fails before the checkpoint is loaded
    model, ckpt, recipe, _, _ = load_run(run)
    if out is None:
        out = str(Path(run) / "model.onnx") if Path(run).is_dir() else str(Path(run).with_suffix(".onnx"))
    meta = {"convrnn_recipe": recipe.name, "convrnn_input_shape": list(ckpt["input_shape"])}
    if ckpt.get("ensemble"):  # y: log of the members' mean probability per frame/step (or their mean value);
        meta["convrnn_ensemble"] = ckpt["ensemble"]  # a CTC ensemble also outputs each member's, to decode jointly
    # bidi: the paragraph direction a lines model's labels are in display order for ("L" or "R"; absent:
    # texts as stored); a decoder puts its readings back in logical order with it
    for key in ("vocab", "classes", "alphabet", "bidi"):
        if isinstance(ckpt.get("meta"), dict) and ckpt["meta"].get(key) is not None:
            meta[f"convrnn_{key}"] = ckpt["meta"][key]
    return export_onnx(model, out, metadata=meta), is_language_model(model)


def onnx_generate(path: str | Path, prime_ids: list[int], length: int, *, banned: Optional[int] = None) -> list[int]:
    """Greedy continuation of ``prime_ids`` by an exported LM step, with onnxruntime and numpy only."""
    import numpy as np
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = session.get_inputs()
    feeds = {i.name: np.zeros([1 if isinstance(d, str) else d for d in i.shape], dtype=np.float32)
             for i in inputs[1:]}  # zero state, batch 1
    x = np.asarray(prime_ids, dtype=np.int64)[None, :]  # (T,) -> (1, T)
    tokens = []
    for _ in range(length):
        logits, *state = session.run(None, {"x": x, **feeds})
        last = logits[0, -1].copy()
        if banned is not None:
            last[banned] = -np.inf
        token = int(last.argmax())
        tokens.append(token)
        feeds = {i.name: s for i, s in zip(inputs[1:], state)}
        x = np.array([[token]], dtype=np.int64)  # (1, 1)
    return tokens
