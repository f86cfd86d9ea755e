"""Preset models: small functions behind ``@register_model`` that fill a spec template.

``create_model("fonts", num_classes=8)`` builds the preset's spec; ``get_preset`` returns the
filled-in :class:`Preset` without building; ``list_models()`` names every preset.
"""
from __future__ import annotations

import difflib
import inspect
import typing
from typing import Any, Callable, NamedTuple, Optional

from convrnn.errors import ConfigError
from convrnn.fields import parse_value


class Preset(NamedTuple):
    """A filled-in preset: everything ``build_model`` needs, plus what it is for."""

    spec: str
    input_shape: tuple
    description: str
    task: str
    num_outputs: Optional[int] = None


PresetFn = Callable[..., Preset]
_MODELS: dict[str, PresetFn] = {}

# Override names accepted everywhere, mapped to the preset functions' own field name.
_ALIASES = {"num_classes": "num_outputs"}


def register_model(fn: Optional[PresetFn] = None, *, name: Optional[str] = None) -> Any:
    """Register a preset function (its name, or ``name``); use as ``@register_model`` or ``@register_model(name=...)``."""
    def decorate(f: PresetFn) -> PresetFn:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered")
        _MODELS[key] = f
        return f
    return decorate(fn) if fn is not None else decorate


def list_models() -> list[str]:
    return sorted(_MODELS)


def split_preset(name: str) -> tuple[str, dict[str, Any]]:
    """``"crnn:filters=16,hidden_size=96"`` -> ``("crnn", {"filters": "16", "hidden_size": "96"})``: a preset
    name with some of its fields set (``--preset`` on the command line). Values stay text here;
    :func:`get_preset` reads each by the type its preset function declares for the field."""
    base, sep, rest = name.partition(":")
    fields: dict[str, Any] = {}
    if not sep:
        return name, fields
    for item in rest.split(","):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise ConfigError(f"preset {name!r}: expected NAME:FIELD=VALUE,FIELD=VALUE, got {item!r}")
        if key in fields:
            raise ConfigError(f"preset {name!r}: field {key!r} given twice")
        fields[key] = value
    return base.strip(), fields


def _lookup(name: str) -> PresetFn:
    name = split_preset(name)[0]
    if name not in _MODELS:
        close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.6)  # lower names unrelated models
        hint = f"did you mean: {', '.join(close)}?" if close else f"known models: {', '.join(list_models())}"
        raise ConfigError(f"unknown model {name!r}; {hint}")
    return _MODELS[name]


def preset_fields(name: str) -> dict[str, Any]:
    """The overridable fields of a preset and their defaults (``name`` may carry fields: ``split_preset``)."""
    return {k: p.default for k, p in inspect.signature(_lookup(name)).parameters.items()}


def _field_value(key: str, raw: Any, typ: Any) -> Any:
    """A preset field's value read by its declared type; text may not hold what separates spec tokens
    or their arguments (a value is written into the spec)."""
    value = parse_value(key, raw, typ)
    if isinstance(value, str) and (not value or any(c.isspace() or c in ",:=" for c in value)):
        raise ConfigError(f"{key}: {value!r} is not a single word (a preset field is written into the spec)")
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
        raise ConfigError(f"{key}: must not be negative, got {value}")
    return value


def get_preset(name: str, **overrides: Any) -> Preset:
    """Fill preset ``name`` with ``overrides`` (unknown fields are a ConfigError listing the known ones).

    ``name`` may set fields itself (``"crnn:filters=16"``, :func:`split_preset`); those win over
    ``overrides`` of the same field, since they are what the user asked for. ``spec=...`` replaces the
    preset's spec outright (to try a variant without a new preset).
    """
    base, named = split_preset(name)
    fn = _lookup(base)
    fields = preset_fields(base)
    spec = overrides.pop("spec", None)  # replaces the whole spec; the other fields still apply
    resolved: dict[str, Any] = {}
    hints = typing.get_type_hints(fn)
    for key, value in overrides.items():
        field = _ALIASES.get(key, key)
        if field not in fields:
            raise ConfigError(f"model {base!r} has no field {key!r}; known: {', '.join(fields)}")
        if field in resolved:
            raise ConfigError(f"model {base!r}: {field!r} given twice (as {key!r} and an alias)")
        # read by the field's declared type, as the name's fields are: 96.7 for an int, or text for a
        # number, would otherwise be pasted into the spec as is
        resolved[field] = value if field == "input_shape" else \
            _field_value(f"model {base!r}: {key}", value, hints.get(field, str))
    for key, value in named.items():
        field = _ALIASES.get(key, key)
        if field not in fields or field == "input_shape":
            known = ", ".join(f for f in fields if f != "input_shape")
            raise ConfigError(f"preset {name!r}: model {base!r} has no field {key!r} to set here; known: {known}")
        resolved[field] = _field_value(f"preset {name!r}: {key}", value, hints.get(field, str))
    if "input_shape" in resolved:
        resolved["input_shape"] = tuple(resolved["input_shape"])
    try:
        preset = fn(**resolved)
    except TypeError as e:  # a caller's override of the wrong kind, e.g. get_preset('crnn', num_layers='two');
        # the name's own fields are already read by their declared types above
        raise ConfigError(f"preset {name!r}: {e}") from None
    return preset if spec is None else preset._replace(spec=str(spec))


def create_model(name: str, **overrides: Any):
    """Build preset ``name`` as a SpecModel (overrides: num_outputs/num_classes, input_shape, hidden_size, ...)."""
    from convrnn.spec.builder import build_model

    preset = get_preset(name, **overrides)
    return build_model(preset.spec, preset.input_shape, preset.num_outputs)


@register_model
def fwtk(*, num_outputs: int = 5, input_shape: tuple = (1, 16, 64), hidden_size: int = 32, filters: int = 4,
         block_width: int = 8) -> Preset:
    """The small font classifier: one conv on every 8-pixel block of a 16x64 line, an LSTM over the
    8 blocks, its last step classifies. 21,005 parameters with the defaults.
    """
    spec = f"blocks:{block_width} conv:{filters},5x5,relu pool:2x2 flatten lstm:{hidden_size} cls:last"
    return Preset(spec, input_shape, "font classifier: one conv per 8-pixel block, LSTM 32, last step (21k parameters)",
                  "classify",
                  num_outputs)


@register_model
def fonts(*, num_outputs: int = 5, input_shape: tuple = (1, 16, 64), hidden_size: int = 64, filters: int = 16,
          pool: str = "mean") -> Preset:
    """The fonts recipe's default: two conv/bn/pool stages, columns, a bidirectional LSTM, mean over steps."""
    spec = (f"conv:{filters},3x3 bn pool:2x2 conv:{2 * filters},3x3 bn pool:2x2 "
            f"cols lstm:{hidden_size},bi cls:{pool}")
    return Preset(spec, input_shape, "font classification of text lines: CRNN-style columns, biLSTM", "classify",
                  num_outputs)


# ----------------------------------------------------------------------------------------------
# Character / byte language models (the charlm recipe). Input: token ids (T,).

@register_model
def charrnn(*, num_outputs: int = 65, input_shape: tuple = (None,), hidden_size: int = 512, num_layers: int = 2,
            dropout: float = 0.5) -> Preset:
    """Karpathy's char-rnn: one-hot input, LSTM 512 x 2 (or 3) layers, dropout, per-step projection."""
    spec = f"onehot lstm:{hidden_size},layers={num_layers},dropout={dropout} drop:{dropout} lm"
    return Preset(spec, input_shape, "char-rnn: one-hot, LSTM 512 x 2, dropout, next-char logits", "lm",
                  num_outputs)


@register_model
def charlm(*, num_outputs: int = 65, input_shape: tuple = (None,), hidden_size: int = 512, embed: int = 64) -> Preset:
    """The charlm recipe's CPU-friendly default: embedding, one wide LSTM layer, next-char projection.

    One 512-wide layer learns more per CPU second than two narrower ones (see docs/charlm.md).
    """
    spec = f"embed:{embed} lstm:{hidden_size} lm"
    return Preset(spec, input_shape, "char LM for CPUs: embed 64, LSTM 512, next-char logits", "lm", num_outputs)


# ----------------------------------------------------------------------------------------------
# Text-line recognition with CTC (the lines recipe). Input: a line image (1, H, W), W varies.

@register_model
def crnn(*, num_outputs: int = 80, input_shape: tuple = (1, 32, None), filters: int = 32, hidden_size: int = 128,
         num_layers: int = 2, dropout: Optional[float] = None) -> Preset:
    """The lines recipe's fast default (Shi et al. 2015 / Puigcerver 2017 family).

    Three conv/bn/pool blocks (the last pools only the height), one step per column at 1/4 of the
    width, a bidirectional LSTM stack, per-step logits over the alphabet plus the CTC blank.
    ``dropout`` (default 0.2) acts between the LSTM layers, so a single layer has none to take.
    """
    if num_layers == 1 and dropout:
        raise ConfigError(f"crnn: dropout={dropout:g} acts between LSTM layers, and num_layers=1 has none; "
                          "give num_layers=2 or more, or leave dropout out")
    dropout = 0.2 if dropout is None else dropout
    f = filters
    spec = (f"conv:{f},3x3 bn pool:2x2 conv:{2 * f},3x3 bn pool:2x2 conv:{4 * f},3x3 bn pool:2x1 "
            f"cols lstm:{hidden_size},bi,layers={num_layers}{f',dropout={dropout}' if num_layers > 1 else ''} ctc")
    return Preset(spec, input_shape, "text lines: conv blocks, columns, biLSTM stack, CTC (fast default)", "ctc",
                  num_outputs)


@register_model
def pham2014(*, num_outputs: int = 80, input_shape: tuple = (1, 32, None), dropout: float = 0.5,
             subsample: str = "4x2") -> Preset:
    """Pham, Bluche, Kermorvant and Louradour (2014): MDLSTM layers and convolutions, dropout on MDLSTM outputs.

    2x2 tiles -> MDLSTM 2 (4 directions) -> conv 6 tanh -> MDLSTM 10 -> conv 20 tanh -> MDLSTM 50
    -> fully connected to the alphabet (a 1x1 conv on every pixel) -> sum over the height -> CTC.
    The directions are concatenated; a convolution over the concatenation equals the paper's
    per-direction convolutions summed. The paper's non-overlapping 2x4 subsampling convolutions are
    applied 4 pixels tall and 2 wide (``subsample``, height x width) so that a 32-pixel line ends
    one row high with one frame per 8 pixels of width (see docs/lines.md).
    """
    p, s = dropout, subsample
    spec = (f"tile:2x2 mdlstm:2,dropout={p} conv:6,{s},tanh,s={s},valid mdlstm:10,dropout={p} "
            f"conv:20,{s},tanh,s={s},valid mdlstm:50,dropout={p} conv:{num_outputs},1x1,linear collapse:sum")
    return Preset(spec, input_shape,
                  "handwriting model of Pham et al. 2014: MDLSTM + conv, dropout 0.5, height sum, CTC", "ctc",
                  num_outputs)


@register_model
def puigcerver2017(*, num_outputs: int = 80, input_shape: tuple = (1, 64, None), filters: int = 16,
                   hidden_size: int = 256, layers: int = 5, conv_dropout: float = 0.2,
                   dropout: float = 0.5) -> Preset:
    """The CNN+BLSTM line recogniser of Puigcerver (2017), "Are multidimensional recurrent layers really
    necessary for handwritten text recognition?".

    Five 3x3 convolution blocks of ``filters`` x 1..5 filters (16-32-48-64-80), each with batch norm
    and a leaky ReLU; 2x2 max pooling after the first three (one frame per 8 pixels of width); dropout
    ``conv_dropout`` before blocks 3 to 5; one step per column; ``layers`` bidirectional LSTM layers of
    ``hidden_size`` with dropout ``dropout`` before each and before the linear layer to the labels.
    The paper reads lines 128 pixels high; the default here is 64 (see docs/lines.md). The
    activation comes before batch norm (the spec's convolutions carry their activation), where the
    paper normalises first.
    """
    f, p, q = filters, conv_dropout, dropout
    blocks = []
    for k in range(1, 6):
        blocks.append(f"{f'drop:{p} ' if k >= 3 and p > 0 else ''}conv:{k * f},3x3,leaky bn{' pool:2x2' if k <= 3 else ''}")
    rnn = f"lstm:{hidden_size},bi,layers={layers}{f',dropout={q}' if layers > 1 and q > 0 else ''}"
    drop = f"drop:{q} " if q > 0 else ""
    spec = " ".join(blocks) + f" cols {drop}{rnn} {drop}ctc"
    return Preset(spec, input_shape, "text lines: the CNN+BLSTM recogniser of Puigcerver 2017 (5 conv blocks, "
                  "5 x BLSTM 256), CTC", "ctc", num_outputs)


# ----------------------------------------------------------------------------------------------
# Digit sequences (the digits and mnist recipes). Input: an image sequence (T, 1, H, W), T varies;
# H x W follows the data (28x28 MNIST, 8x8 for the bundled fallback). ``op`` is what the sequence's
# target is (sum, product, running-sum: the recipe fills it and ``per_step`` from its data); ``head``
# is how the model gives it.

DIGIT_VALUES = 10  # a digit is worth 0..9: the per-step distributions of the ``dist`` head
MAX_VALUE_CLASSES = 10_000  # a classification head over more possible values than this is refused
_VALUE_TASKS = {"reg": "regress", "cls": "value_classify", "dist": "value_sum"}


def _resolve_head(head: str, op: str, auto: dict[str, str]) -> str:
    if head not in ("auto", "reg", "cls", "dist"):
        raise ConfigError(f"head: expected auto, reg, cls or dist, got {head!r}")
    if op not in ("sum", "product", "running-sum"):
        raise ConfigError(f"op: expected sum, product or running-sum, got {op!r}")
    head = auto[op] if head == "auto" else head
    if head == "dist" and op != "sum":
        raise ConfigError(f"head=dist models a sum of per-digit values; for op {op} use reg or cls")
    return head


def _value_head(head: str, per_step: bool, num_outputs: int, reg_pool: str = "last") -> tuple[str, int]:
    """The head op and its number of outputs. ``reg``: one real output; ``cls``: logits over the
    ``num_outputs`` possible values; ``dist``: logits over the values of each step (a sum's
    distribution is their convolution, ``SumOfValuesTask``)."""
    if head == "cls" and num_outputs > MAX_VALUE_CLASSES:
        raise ConfigError(f"head=cls needs a class for each of {num_outputs:,} possible values (products of "
                          f"long sequences); use head=reg, or shorter sequences")
    outputs = {"reg": 1, "cls": num_outputs, "dist": DIGIT_VALUES}[head]
    if per_step or head == "dist":
        return "reg:seq", outputs  # (B, T, outputs): values, or logits per step for cls and dist
    return (f"reg:{reg_pool}" if head == "reg" else "cls:last"), outputs


@register_model
def caine2016(*, num_outputs: int = 37, input_shape: tuple = (None, 1, 28, 28), activation: str = "tanh",
              head: str = "auto", op: str = "sum", per_step: bool = False) -> Preset:
    """The CNN→GRU digit-sum model of Caine (2016): time-distributed conv 8@4x4 and 16@3x3 (tanh,
    valid), GRU 200, GRU 100, a dense output. ``head=auto``: the original single regression output for
    sums and running sums, a class per possible value for products.

    ``num_outputs``: the number of possible target values (the ``cls`` head's classes; the preset's
    own ``num_outputs`` is what its head gives). The second GRU returns every step when ``per_step``
    (running sums) and only the last otherwise.
    """
    a, head = activation, _resolve_head(head, op, {"sum": "reg", "running-sum": "reg", "product": "cls"})
    out, n = _value_head(head, per_step, num_outputs)
    spec = f"conv:8,4x4,{a},valid conv:16,3x3,{a},valid flatten gru:200 gru:100 {out}"
    return Preset(spec, input_shape, "the CNN→GRU digit-sum model of Caine 2016: time-distributed conv 8/16 tanh, "
                  "GRU 200, GRU 100, dense", _VALUE_TASKS[head], n)


@register_model
def digits(*, num_outputs: int = 37, input_shape: tuple = (None, 1, 28, 28), activation: str = "relu",
           head: str = "auto", op: str = "sum", per_step: bool = False, filters: int = 16, embed: int = 64,
           hidden_size: int = 64) -> Preset:
    """The digits recipe's default: two conv/bn/pool stages and a dense layer per digit, one GRU, a value head.

    Pooling shrinks the features per step of caine2016 to a compact code of each digit, which the
    GRU reads much sooner (docs/digits.md). Batch norm lets relu train at Adam's 3e-3. ``head=auto``:
    for sums a distribution over 0..9 per digit (``dist``, the sum's by convolution); for products a
    class per possible value (``cls``); for running sums a value per step (``reg``). A regression head
    for sums adds a value per step (``reg:sum``): the model's value is a sum by construction.
    """
    a, f = activation, filters
    head = _resolve_head(head, op, {"sum": "dist", "running-sum": "reg", "product": "cls"})
    out, n = _value_head(head, per_step, num_outputs, "sum" if op == "sum" else "last")
    spec = (f"conv:{f},3x3,{a} bn pool:2x2 conv:{2 * f},3x3,{a} bn pool:2x2 flatten dense:{embed},relu "
            f"gru:{hidden_size} {out}")
    return Preset(spec, input_shape, "digit sequences: conv/bn/pool x2 + dense per digit, GRU 64, value head",
                  _VALUE_TASKS[head], n)


@register_model
def mnist_cnn(*, num_outputs: int = 10, input_shape: tuple = (1, 28, 28), activation: str = "tanh") -> Preset:
    """Single-digit classifier whose first two layers match caine2016 (8@4x4, 16@3x3), to compare filters."""
    a = activation
    spec = f"conv:8,4x4,{a},valid conv:16,3x3,{a},valid pool:2x2 flatten dense:64,relu cls:last"
    return Preset(spec, input_shape, "digit classifier whose first two conv layers match caine2016's", "classify",
                  num_outputs)
