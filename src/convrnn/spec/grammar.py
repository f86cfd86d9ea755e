"""The model spec grammar: parse a spec string into typed ops, and format ops back. No torch here.

A spec is whitespace-separated tokens, one per layer, read left to right. A token is ``name`` or
``name:arg,arg,...``; an arg is a positional value (an int, a float, a size ``AxB``, or a word),
a flag word, or ``key=value``. Positional args may also be given as ``key=value`` by their name.

Every op's usage, shapes and meaning are in its ``OpSchema`` below; ``op_table()`` renders them as
the table of docs/spec.md (the only copy: a test keeps the docs equal to it).

ACT is one of relu, tanh, sigmoid, gelu, elu, leaky, linear (or none). A size ``K`` means ``KxK``.
Further ops are added with ``convrnn.spec.builder.register_op`` (see docs/spec.md).
"""
from __future__ import annotations

import difflib
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from convrnn.errors import SpecError

log = logging.getLogger(__name__)

ACTIVATION_NAMES = ("relu", "tanh", "sigmoid", "gelu", "elu", "leaky", "linear", "none")

_NAME = re.compile(r"[a-z][a-z0-9_]*")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()


@dataclass(frozen=True)
class Kind:
    """How one argument is read from text (``parse`` raises ValueError) and written back."""

    name: str
    parse: Callable[[str], Any]
    format: Callable[[Any], str] = str


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        if not re.fullmatch(r"[+-]?\d+", text):
            raise ValueError
        value = int(text)
        if value < minimum:
            raise ValueError
        return value
    return parse


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value < 1.0:
        raise ValueError
    return value


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)(?:x(\d+))?", text)
    if not match:
        raise ValueError
    a = int(match.group(1))
    b = a if match.group(2) is None else int(match.group(2))
    if a < 1 or b < 1:
        raise ValueError
    return (a, b)


def choice(*words: str, aliases: Optional[dict[str, str]] = None) -> Kind:
    """A word from ``words``; ``aliases`` map extra spellings to one of them."""
    aliases = aliases or {}

    def parse(text: str) -> str:
        text = aliases.get(text, text)
        if text not in words:
            raise ValueError
        return text
    return Kind("one of " + "|".join(words), parse)


def int_choice(*values: int) -> Kind:
    """An int from ``values``."""
    def parse(text: str) -> int:
        value = _int_at_least(-(10 ** 9))(text)
        if value not in values:
            raise ValueError
        return value
    return Kind("one of " + "|".join(map(str, values)), parse)


POS_INT = Kind("a positive int", _int_at_least(1))
NONNEG_INT = Kind("an int >= 0", _int_at_least(0))
FLOAT = Kind("a number", float, repr)
PROB = Kind("a probability in [0, 1)", _probability, repr)
SIZE = Kind("a size like 3x3 (or 3 for a square)", _size, lambda v: f"{v[0]}x{v[1]}")
ACT = choice(*ACTIVATION_NAMES[:-1], aliases={"none": "linear"})


@dataclass(frozen=True)
class Param:
    """One named argument of an op: its kind and default (``REQUIRED`` when it has none)."""

    name: str
    kind: Kind
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class OpSchema:
    """What one op accepts: positional ``args`` in order, ``keywords`` (``key=value``) and ``flags``."""

    name: str
    usage: str
    meaning: str = ""
    args: tuple[Param, ...] = ()
    keywords: tuple[Param, ...] = ()
    flags: tuple[str, ...] = ()
    shapes: str = ""   # input -> output, for the op table

    def __post_init__(self) -> None:
        names = [p.name for p in self.args + self.keywords] + list(self.flags)
        if len(set(names)) != len(names):
            raise ValueError(f"op {self.name!r} declares an argument name twice: {names}")
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"op names are lowercase words, got {self.name!r}")

    def param(self, key: str) -> Optional[Param]:
        return next((p for p in self.args + self.keywords if p.name == key), None)


@dataclass(frozen=True)
class OpSpec:
    """One parsed token: the op name and every argument resolved to a typed value (defaults filled).

    ``token`` and ``position`` (0-based character offset) say where it came from; they do not take
    part in equality, so ``parse(format_spec(parse(s))) == parse(s)``.
    """

    name: str
    args: dict = field(default_factory=dict)
    token: str = field(default="", compare=False)
    position: int = field(default=-1, compare=False)

    def __getitem__(self, key: str) -> Any:
        return self.args[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.args.get(key, default)


SCHEMAS: dict[str, OpSchema] = {}


def register_schema(schema: OpSchema, *, replace: bool = False) -> OpSchema:
    """Add an op to the grammar (``replace=True`` to redefine an existing one)."""
    if schema.name in SCHEMAS and not replace:
        raise ValueError(f"op {schema.name!r} is already registered")
    SCHEMAS[schema.name] = schema
    return schema


def get_schema(name: str) -> Optional[OpSchema]:
    return SCHEMAS.get(name)


def op_names() -> list[str]:
    return sorted(SCHEMAS)


def op_table() -> str:
    """Every op as a Markdown table (op, usage, input -> output, meaning): what docs/spec.md shows."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|")
    rows = ["| op | usage | input -> output | meaning |", "|---|---|---|---|"]
    rows += [f"| {s.name} | `{cell(s.usage)}` | {cell(s.shapes)} | {cell(s.meaning)} |" for s in SCHEMAS.values()]
    return "\n".join(rows) + "\n"


def _tokens(spec: str) -> Iterable[tuple[str, int]]:
    for match in re.finditer(r"\S+", spec):
        yield match.group(0), match.start()


def parse(spec: str) -> list[OpSpec]:
    """Parse a spec into ops; a SpecError quotes the offending token and its position."""
    if not isinstance(spec, str):
        raise SpecError(f"a spec is a string, got {type(spec).__name__}")
    ops = [_parse_token(token, position, spec) for token, position in _tokens(spec)]
    if not ops:
        raise SpecError(f"empty spec {spec!r}: expected tokens like 'conv:16,3x3 pool:2x2 cols lstm:64 cls:last'")
    return ops


def _parse_token(token: str, position: int, spec: str) -> OpSpec:
    def fail(message: str) -> SpecError:
        return SpecError(message, spec=spec, token=token, position=position)

    name, colon, rest = token.partition(":")
    schema = get_schema(name) if _NAME.fullmatch(name) else None
    if schema is None:
        close = difflib.get_close_matches(name, op_names(), n=3, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}?" if close else f"; known ops: {', '.join(op_names())}"
        raise fail(f"unknown op {name!r}{hint}")
    if colon and not rest:
        raise fail(f"{name}: nothing after ':' (usage: {schema.usage})")
    values: dict[str, Any] = {}
    flags: set[str] = set()
    next_arg = 0
    for item in rest.split(",") if rest else []:
        if not item:
            raise fail(f"{name}: empty argument (usage: {schema.usage})")
        if "=" in item:
            key, _, text = item.partition("=")
            param = schema.param(key)
            if param is None:
                if key in schema.flags:
                    raise fail(f"{name}: {key!r} is a flag; write it alone, without '='")
                known = [p.name for p in schema.args + schema.keywords]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"known: {', '.join(known) or 'none'}"
                raise fail(f"{name}: unknown keyword {key!r}; {hint} (usage: {schema.usage})")
            if key in values:
                raise fail(f"{name}: {key!r} given twice")
            values[key] = _convert(param, text, name, schema, fail)
        elif item in schema.flags:
            if item in flags:
                raise fail(f"{name}: flag {item!r} given twice")
            flags.add(item)
        else:
            next_arg = _take_positional(item, next_arg, values, name, schema, fail)
    for param in schema.args + schema.keywords:
        if param.name not in values:
            if param.required:
                raise fail(f"{name}: missing required argument {param.name!r} (usage: {schema.usage})")
            values[param.name] = param.default
    for flag in schema.flags:
        values[flag] = flag in flags
    return OpSpec(name, values, token, position)


def _convert(param: Param, text: str, name: str, schema: OpSchema, fail: Callable[[str], SpecError]) -> Any:
    try:
        return param.kind.parse(text)
    except ValueError:
        raise fail(f"{name}: bad value {text!r} for {param.name}: expected {param.kind.name} "
                   f"(usage: {schema.usage})") from None


def _take_positional(item: str, start: int, values: dict, name: str, schema: OpSchema,
                     fail: Callable[[str], SpecError]) -> int:
    """Give ``item`` to the next positional arg that accepts it; optional ones it does not fit are skipped."""
    first_error: Optional[SpecError] = None
    index = start
    while index < len(schema.args):
        param = schema.args[index]
        index += 1
        if param.name in values:
            continue
        try:
            values[param.name] = _convert(param, item, name, schema, fail)
            return index
        except SpecError as err:
            first_error = first_error or err
            if param.required:
                break
    if first_error is not None:
        raise first_error
    raise fail(f"{name}: unexpected argument {item!r} (usage: {schema.usage})")


def format_op(op: OpSpec) -> str:
    """One op as its canonical token: positional args up to the first default, then keywords, then flags."""
    schema = get_schema(op.name)
    if schema is None:
        raise SpecError(f"unknown op {op.name!r}")
    parts: list[str] = []
    positional = True
    for param in schema.args:
        value = op.args.get(param.name, param.default)
        is_default = not param.required and value == param.default
        if positional and not is_default:
            parts.append(param.kind.format(value))
        elif not is_default:
            parts.append(f"{param.name}={param.kind.format(value)}")
        else:
            positional = False
    parts += [flag for flag in schema.flags if op.args.get(flag)]
    for param in schema.keywords:
        value = op.args.get(param.name, param.default)
        if value != param.default:
            parts.append(f"{param.name}={param.kind.format(value)}")
    return op.name + (":" + ",".join(parts) if parts else "")


def format_spec(ops: Iterable[OpSpec]) -> str:
    """The canonical spec string for parsed ops (round trip: ``parse(format_spec(ops)) == ops``)."""
    return " ".join(format_op(op) for op in ops)


def _recurrent(name: str, cell: str, shapes: str, meaning: str) -> OpSchema:
    return OpSchema(name, f"{name}:H[,bi][,layers=N][,dropout=P][,wdrop=P]", meaning,
                    args=(Param("hidden", POS_INT),), flags=("bi",),
                    keywords=(Param("layers", POS_INT, 1), Param("dropout", PROB, 0.0), Param("wdrop", PROB, 0.0)),
                    shapes=shapes)


for _schema in (
    OpSchema("blocks", "blocks:W[,S]", "blocks of width W every S pixels (S defaults to W); error if the image "
             "is narrower than W", args=(Param("width", POS_INT), Param("stride", POS_INT, None)),
             shapes="`(B, C, H, W')` -> `(B, T, C, H, W)`, `T = (W' - W) // S + 1`"),
    OpSchema("cols", "cols", "one step per column (CRNN)", shapes="`(B, C, H, W)` -> `(B, W, C*H)`"),
    OpSchema("conv", "conv:F,KHxKW[,ACT][,s=SHxSW][,valid]", "F filters, ACT defaults to relu; 'same' padding "
             "(`ceil(size/stride)`, even kernels pad one more at the bottom/right) unless `valid`",
             args=(Param("filters", POS_INT), Param("kernel", SIZE), Param("act", ACT, "relu")),
             keywords=(Param("s", SIZE, (1, 1)),), flags=("valid",),
             shapes="`(B, C, H, W)` -> `(B, F, H', W')`, also per step on image sequences"),
    OpSchema("pool", "pool:KHxKW[,s=SHxSW][,avg]", "max pooling (average with `avg`); stride defaults to the "
             "kernel; no padding", args=(Param("kernel", SIZE),), keywords=(Param("s", SIZE, None),), flags=("avg",),
             shapes="`(B, C, H, W)` -> `(B, C, (H-KH)//SH+1, (W-KW)//SW+1)`, also per step"),
    OpSchema("bn", "bn", "batch norm over channels (images) or features (sequences, vectors)", shapes="same shape"),
    OpSchema("drop", "drop:P", "dropout", args=(Param("p", PROB),), shapes="same shape"),
    OpSchema("flatten", "flatten", "needs fixed C, H, W",
             shapes="`(B, T, C, H, W)` -> `(B, T, C*H*W)`; `(B, C, H, W)` -> `(B, C*H*W)`"),
    OpSchema("dense", "dense:N[,ACT]", "linear layer, ACT defaults to linear",
             args=(Param("units", POS_INT), Param("act", ACT, "linear")),
             shapes="`(B, T, F)` -> `(B, T, N)`; `(B, F)` -> `(B, N)`"),
    OpSchema("embed", "embed:D[,vocab=V]", "learned vectors; V defaults to `num_outputs`",
             args=(Param("dim", POS_INT),), keywords=(Param("vocab", POS_INT, None),), shapes="`(B, T)` -> `(B, T, D)`"),
    OpSchema("onehot", "onehot[:vocab=V]", "one-hot vectors; V defaults to `num_outputs`",
             keywords=(Param("vocab", POS_INT, None),), shapes="`(B, T)` -> `(B, T, V)`"),
    _recurrent("lstm", "LSTM", "`(B, T, F)` -> `(B, T, H)` (`2H` with `bi`)",
               "LSTM stack; dropout between stacked layers (needs layers >= 2; use `drop:P` for the output); "
               "`wdrop` drops entries of the recurrent (hidden-to-hidden) matrices in training, one mask per batch"),
    _recurrent("gru", "GRU", "as lstm", "GRU stack"),
    OpSchema("cls", "cls:POOL[,N]", "class logits; POOL last/mean/max over valid steps; N defaults to `num_outputs`",
             args=(Param("pool", choice("last", "mean", "max")), Param("classes", POS_INT, None)),
             shapes="`(B, T, F)` or `(B, F)` -> `(B, N)`"),
    OpSchema("reg", "reg:POOL[,N]", "real outputs; POOL last/mean/max over valid steps, `sum` (the linear layer "
             "at every valid step, outputs added: for additive targets such as digit sums) or `seq` (per step); "
             "N defaults to `num_outputs`, else 1",
             args=(Param("pool", choice("last", "mean", "max", "sum", "seq")), Param("outputs", POS_INT, None)),
             shapes="`(B, T, F)` or `(B, F)` -> `(B, N)`; `seq`: `(B, T, N)`"),
    OpSchema("ctc", "ctc[:N]", "per-step logits over N symbols including the blank; N defaults to `num_outputs`",
             args=(Param("symbols", POS_INT, None),), shapes="`(B, T, F)` -> `(B, T, N)`"),
    OpSchema("lm", "lm[:N][,tie]", "per-step next-token logits; `tie` shares the weights of the nearest earlier "
             "`embed` (needs F = D and N = V)", args=(Param("vocab", POS_INT, None),), flags=("tie",),
             shapes="`(B, T, F)` -> `(B, T, N)`"),
    OpSchema("tile", "tile:KHxKW", "space-to-depth: each KHxKW tile becomes one pixel of KH*KW*C channels, "
             "ordered (c, dy, dx); the image is zero-padded to whole tiles", args=(Param("size", SIZE),),
             shapes="`(B, C, H, W)` -> `(B, C*KH*KW, ceil(H/KH), ceil(W/KW))`"),
    OpSchema("mdlstm", "mdlstm:N[,dirs=1|2|4][,sum][,dropout=P]", "multidirectional 2-D LSTM, N units per "
             "direction, each direction scanning from its own corner (docs/mdlstm.md); directions concatenated, or "
             "added with `sum`; dropout on its output in training", args=(Param("hidden", POS_INT),),
             keywords=(Param("dirs", int_choice(1, 2, 4), 4), Param("dropout", PROB, 0.0)), flags=("sum",),
             shapes="`(B, C, H, W)` -> `(B, dirs*N, H, W)` (`N` with `sum`)"),
    OpSchema("seplstm", "seplstm:N[,sum]", "separable 2-D LSTM: a bidirectional LSTM along every row, then "
             "along every column; directions concatenated, or added with `sum`", args=(Param("hidden", POS_INT),),
             flags=("sum",), shapes="`(B, C, H, W)` -> `(B, 2N, H, W)` (`N` with `sum`)"),
    OpSchema("lstm2d", "lstm2d:N[,sum]", "the same layer as `seplstm`", args=(Param("hidden", POS_INT),),
             flags=("sum",), shapes="as seplstm"),
    OpSchema("collapse", "collapse[:sum|mean|max]", "height collapse: the image's columns become the steps of a "
             "feature sequence, summed (the default), averaged or maxed over the height",
             args=(Param("mode", choice("sum", "mean", "max"), "sum"),), shapes="`(B, C, H, W)` -> `(B, W, C)`"),
):
    register_schema(_schema)
