"""Spec grammar (parse, format, errors, no torch) and the builder (shapes, errors, summary)."""
# B batch, T time steps, C channels, H height, W width, F features, V classes/vocabulary
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from convrnn.errors import SpecError
from convrnn.layers import Embedding, Project
from convrnn.spec import build_model, format_spec, parse
from convrnn.spec import grammar
from convrnn.spec.builder import OPS, SpecModel, register_op
from convrnn.spec.grammar import POS_INT, OpSchema, Param

ROOT = Path(__file__).resolve().parents[1]

# One example per built-in op (with its arguments exercised).
EXAMPLES = {
    "blocks": ["blocks:8", "blocks:8,4", "blocks:width=8,stride=2"],
    "cols": ["cols"],
    "conv": ["conv:4,5x5", "conv:4,5", "conv:4,5x3,tanh", "conv:4,3x3,relu,s=2x1,valid", "conv:4,3x3,valid,none"],
    "pool": ["pool:2x2", "pool:2", "pool:3x2,s=1x2,avg"],
    "bn": ["bn"],
    "drop": ["drop:0.2", "drop:0"],
    "flatten": ["flatten"],
    "dense": ["dense:10", "dense:10,gelu"],
    "embed": ["embed:64", "embed:64,vocab=100"],
    "onehot": ["onehot", "onehot:vocab=30"],
    "lstm": ["lstm:32", "lstm:32,bi", "lstm:512,layers=2,dropout=0.2", "lstm:8,bi,layers=3"],
    "gru": ["gru:200", "gru:16,bi,dropout=0.1,layers=2"],
    "cls": ["cls:last", "cls:mean,10", "cls:max"],
    "reg": ["reg:last", "reg:seq,3"],
    "ctc": ["ctc", "ctc:80"],
    "lm": ["lm", "lm:65", "lm:tie", "lm:65,tie"],
}


def test_every_builtin_op_has_examples():
    builtin = {name for name in grammar.SCHEMAS if name in EXAMPLES}
    assert set(EXAMPLES) == builtin == {"blocks", "cols", "conv", "pool", "bn", "drop", "flatten", "dense", "embed",
                                        "onehot", "lstm", "gru", "cls", "reg", "ctc", "lm"}


@pytest.mark.parametrize("token", [t for tokens in EXAMPLES.values() for t in tokens])
def test_every_op_parses_and_round_trips(token):
    ops = parse(token)
    assert len(ops) == 1 and ops[0].token == token and ops[0].position == 0
    assert parse(format_spec(ops)) == ops
    assert format_spec(parse(format_spec(ops))) == format_spec(ops)


def test_parsed_values_are_typed_with_defaults():
    conv, pool, lstm, lm = parse("conv:4,5 pool:3x2,avg  lstm:32,bi,dropout=0.25,layers=2 lm:tie")
    assert conv.args == {"filters": 4, "kernel": (5, 5), "act": "relu", "s": (1, 1), "valid": False}
    assert pool["kernel"] == (3, 2) and pool["s"] is None and pool["avg"] is True
    assert lstm.args == {"hidden": 32, "bi": True, "layers": 2, "dropout": 0.25, "wdrop": 0.0}
    assert lm["tie"] is True and lm["vocab"] is None
    assert [op.position for op in parse("conv:4,5 pool:3x2,avg  lstm:32")] == [0, 9, 23]
    assert parse("conv:4,3x3,none")[0]["act"] == "linear"


def test_round_trip_of_a_long_spec():
    spec = "blocks:8,4 conv:4,5x5,tanh,s=2x1 pool:2x2,avg bn flatten lstm:32,bi,layers=2,dropout=0.1 drop:0.5 cls:mean,7"
    ops = parse(spec)
    assert parse(format_spec(ops)) == ops
    assert parse(spec.replace(" ", "   ")) == ops
    assert parse("conv:4,3x3") != parse("conv:4,3x3,tanh")


@pytest.mark.parametrize("spec,message,token,position", [
    ("conv:4,3x3 lstn:32", "unknown op 'lstn'; did you mean: lstm", "lstn:32", 11),
    ("cols  gru:16,bi,layerz=2", "unknown keyword 'layerz'; did you mean 'layers'", "gru:16,bi,layerz=2", 6),
    ("conv:4,3y3", "bad value '3y3' for kernel", "conv:4,3y3", 0),
    ("conv:4,3x3,tanhh", "bad value 'tanhh' for act", "conv:4,3x3,tanhh", 0),
    ("cols lstm", "missing required argument 'hidden'", "lstm", 5),
    ("drop:1.5", "expected a probability in [0, 1)", "drop:1.5", 0),
    ("cls:last,5,6", "unexpected argument '6'", "cls:last,5,6", 0),
    ("lstm:4,bi,bi", "flag 'bi' given twice", "lstm:4,bi,bi", 0),
    ("lstm:4,hidden=5", "'hidden' given twice", "lstm:4,hidden=5", 0),
    ("lstm:4,bi=1", "'bi' is a flag", "lstm:4,bi=1", 0),
    ("cols lstm:", "nothing after ':'", "lstm:", 5),
    ("conv:4,,3", "empty argument", "conv:4,,3", 0),
    ("blocks:0", "expected a positive int", "blocks:0", 0),
    ("Conv:4,3", "unknown op 'Conv'", "Conv:4,3", 0),
])
def test_parse_errors_quote_token_and_position(spec, message, token, position):
    with pytest.raises(SpecError) as info:
        parse(spec)
    err = info.value
    assert message in str(err)
    assert f"token {token!r} at position {position}" in str(err)
    assert err.token == token and err.position == position and err.spec == spec
    assert isinstance(err, ValueError)


def test_empty_spec_is_an_error():
    with pytest.raises(SpecError, match="empty spec"):
        parse("   ")


def test_grammar_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import convrnn, convrnn.spec, convrnn.spec.grammar, convrnn.spec.presets\n"
            "from convrnn.spec import parse, format_spec\n"
            "ops = parse('blocks:8 conv:4,5x5 pool:2x2 flatten lstm:32,bi cls:last')\n"
            "assert parse(format_spec(ops)) == ops\n"
            "from convrnn.spec.presets import get_preset; get_preset('fwtk')\n"
            "try:\n    parse('nosuchop')\nexcept ValueError: pass\n"
            "assert sys.modules['torch'] is None\n"
            "print('ok')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_op_table_of_the_docs_is_the_grammars():
    """docs/spec.md shows ``op_table()`` between its markers, and every op is in it."""
    docs = (ROOT / "docs" / "spec.md").read_text()
    block = docs.split("<!-- ops:start -->\n", 1)[1].split("<!-- ops:end -->", 1)[0]
    assert block == grammar.op_table(), "regenerate: python -c 'from convrnn.spec.grammar import op_table; print(op_table())'"
    for name in set(EXAMPLES) | set(grammar.SCHEMAS):
        assert f"| {name} | `" in block, name


def test_activation_names_match_layers():
    from convrnn.layers.conv import ACTIVATIONS
    assert set(grammar.ACTIVATION_NAMES) == set(ACTIVATIONS)


# ---- builder ----

def test_builder_shapes_and_layer_choices():
    model = build_model("blocks:8 conv:4,5x5,relu pool:2x2 flatten lstm:32,bi drop:0.1 cls:last", (1, 16, 64), 5)
    assert [type(m).__name__ for m in model.layers] == ["Blocks", "TimeDistributed", "TimeDistributed", "Flatten",
                                                        "Recurrent", "Dropout", "Classify"]
    assert model.layers[-1].bidirectional_split
    assert model.names == ["blocks:8", "conv:4,5x5,relu", "pool:2x2", "flatten", "lstm:32,bi", "drop:0.1", "cls:last"]
    assert tuple(model(torch.randn(3, 1, 16, 64)).shape) == (3, 5)
    plain = build_model("conv:4,3 pool:2 cols lstm:8 cls:last", (1, 8, 16), 3)
    assert not plain.layers[-1].bidirectional_split


@pytest.mark.parametrize("spec,input_shape,message,token", [
    ("cols lstm:8", (None, 1, 8, 8), "cols expects an image (B, C, H, W), got an image sequence", "cols"),
    ("conv:4,3 lstm:8", (1, 8, 8), "lstm expects a feature sequence (B, T, F), got an image", "lstm:8"),
    ("blocks:9 flatten", (1, 8, 8), "blocks of width 9 do not fit in an image of width 8", "blocks:9"),
    ("embed:8 lstm:4 cls:last", (None,), "embed needs the number of vocabulary", "embed:8"),
    ("cols cls:last", (1, 8, 8), "cls needs the number of classes", "cls:last"),
    ("cols lstm:4 lm:9,tie", (1, 8, 8), "needs an earlier embed", "lm:9,tie"),
    ("cols lstm:4,dropout=0.5", (1, 8, 8), "needs layers >= 2", "lstm:4,dropout=0.5"),
    ("conv:2,5x5,valid cols", (1, 3, 9), "needs a larger input than 3x9", "conv:2,5x5,valid"),
    ("cols flatten", (1, 8, 8), "flatten expects", "flatten"),
    ("conv:4,3 cols lstm:3", (1, 8, None), None, None),
    ("lstm:4", (None,), "token ids enter through embed or onehot", "lstm:4"),
])
def test_builder_errors_quote_the_token(spec, input_shape, message, token):
    if message is None:
        build_model(spec, input_shape, 3)
        return
    with pytest.raises(SpecError) as info:
        build_model(spec, input_shape, None)
    assert message in str(info.value)
    assert info.value.token == token
    assert info.value.position == spec.index(token)


def test_bad_input_shape_is_a_spec_error():
    with pytest.raises(SpecError, match="input_shape must be"):
        build_model("cols", (8, 8), 3)


def test_run_passes_lengths_and_state():
    model = build_model("embed:8 lstm:6 gru:5,bi lm", (None,), 11)
    x = torch.randint(0, 11, (2, 7))
    out = model.run(x)
    assert tuple(out.y.shape) == (2, 7, 11) and len(out.state) == 2
    first = model.run(x[:, :3])
    second = model.run(x[:, 3:], state=first.state)
    # the unidirectional LSTM continues exactly; the bidirectional GRU cannot (it looks ahead), so compare
    # the LSTM's state after both windows with its state after one run over the concatenation
    torch.testing.assert_close(second.state[0], out.state[0])
    lengths = torch.tensor([7, 4])
    packed = model.run(x, lengths)
    assert packed.lengths is lengths
    torch.testing.assert_close(packed.y[1, :4], model.run(x[1:, :4]).y[0])
    with pytest.raises(ValueError, match="2 entries"):
        model.run(x, state=[None])
    with pytest.raises(ValueError, match="expected input of shape"):
        build_model("cols lstm:4 cls:last", (1, 8, None), 3)(torch.randn(2, 2, 8, 5))


def test_run_refuses_bad_inputs_with_one_message_naming_what_is_wrong():
    images = build_model("conv:4,3x3 pool:2x2 cols lstm:4,bi ctc", (1, 8, None), 5).eval()
    x = torch.rand(2, 1, 8, 20)
    for lengths, message in [(torch.tensor([0, 20]), r"lengths must lie in \[1, 20\] \(the input's width W\), got \[0, 20\]"),
                             (torch.tensor([21, 20]), r"got \[21, 20\]"),
                             (torch.tensor([20, 20, 20]), r"one entry per batch row \(2\)"),
                             (torch.tensor([20.0, 10.0]), "must be integers")]:
        with pytest.raises(ValueError, match=message):
            images.run(x, lengths)
    assert images.run(x, [20, 10]).lengths.tolist() == [10, 5]  # a list is taken as int64 lengths
    for bad, message in [(x.double(), "expected a torch.float32 input .* got torch.float64"),
                         ((x * 255).to(torch.uint8), "floating-point input .* got torch.uint8"),
                         (torch.rand(2, 1, 8, 1), r"input of shape \(2, 1, 8, 1\) is too small for layer 'pool:2x2'")]:
        with pytest.raises(ValueError, match=message):
            images(bad)
    with pytest.raises(TypeError, match="torch.Tensor input, got numpy.ndarray"):
        images(x.numpy())
    tokens = build_model("embed:8 lstm:6 lm", (None,), 11)
    for bad, message in [(torch.tensor([[1, 11]]), "token id 11 is outside this model's vocabulary of 11"),
                         (torch.tensor([[-1, 2]]), "token id -1"),
                         (torch.tensor([[1.0, 2.0]]), "integer token ids")]:
        with pytest.raises(ValueError, match=message):
            tokens(bad)


def test_lengths_flow_through_conv_pool_cols_to_the_head():
    model = build_model("conv:3,3x3,s=1x2 pool:2x2 cols lstm:4 cls:mean", (1, 8, None), 3).eval()
    x = torch.randn(2, 1, 8, 40)
    lengths = torch.tensor([40, 21])
    out = model.run(x, lengths)
    assert out.lengths is None
    alone = model.run(x[1:, :, :, :21])
    torch.testing.assert_close(out.y[1], alone.y[0])


def test_lm_tie_shares_weights_and_params_count_once():
    model = build_model("embed:6 lstm:6 lm:tie", (None,), 13)
    embedding, head = model.layers[0], model.layers[-1]
    assert isinstance(embedding, Embedding) and isinstance(head, Project)
    assert head.linear.weight is embedding.weight
    summary = model.summary()
    assert summary.params == sum(p.numel() for p in model.parameters())
    assert summary.rows[-1].params == 13  # only the bias is new


@pytest.mark.parametrize("spec,input_shape,num_outputs", [
    ("blocks:8 conv:4,5x5,relu pool:2x2 flatten lstm:32 cls:last", (1, 16, 64), 5),
    ("conv:8,4x4,tanh,valid conv:16,3x3,tanh,valid flatten gru:20 gru:10 reg:last", (None, 1, 28, 28), None),
    ("conv:8,3x3 bn pool:2x2 conv:16,3x3 pool:2x1 cols lstm:16,bi ctc", (1, 16, None), 30),
    ("embed:16 lstm:32,layers=2 drop:0.2 lm", (None,), 20),
    ("onehot dense:8,tanh gru:8 reg:seq,2", (None,), 9),
    ("conv:2,3 flatten dense:4 cls:max", (1, 6, 6), 3),
])
def test_summary_shapes_params_and_memory(spec, input_shape, num_outputs):
    model = build_model(spec, input_shape, num_outputs)
    summary = model.summary(batch_size=4, seq_len=10)
    assert len(summary.rows) == len(model.layers)
    assert summary.params == sum(p.numel() for p in model.parameters())
    assert summary.params == sum(r.params for r in summary.rows)
    for row, layer in zip(summary.rows, model.layers):
        assert row.params == sum(p.numel() for p in layer.parameters())
    # real shapes, with every unknown size set to 10
    concrete = tuple(10 if s is None else s for s in input_shape)
    x = torch.randint(0, num_outputs, (4, *concrete)) if len(input_shape) == 1 else torch.randn(4, *concrete)
    with torch.no_grad():
        for row, layer in zip(summary.rows, model.eval().layers):
            x = layer(x, None, None)[0] if layer.stateful else layer(x)
            assert len(row.shape) == x.dim()
            assert all(s is None or s == a for s, a in zip(row.shape, x.shape)), (row.token, row.shape, x.shape)
    p = summary.params * 4
    assert summary.memory["weights"] == p and summary.memory["gradients"] == p and summary.memory["optimizer"] == 2 * p
    assert summary.memory["activations"] > 0
    assert summary.memory_bytes == sum(summary.memory.values())
    bigger = model.summary(batch_size=8, seq_len=10)
    assert bigger.memory["activations"] > summary.memory["activations"]
    text = str(summary)
    assert f"{summary.params:,}" in text and all(r.token in text for r in summary.rows)


def test_memory_estimate_formula_on_a_known_model():
    model = build_model("flatten lstm:4", (3, 1, 2, 2), None)  # T=3, F=4
    summary = model.summary(batch_size=2)
    params = sum(p.numel() for p in model.parameters())
    input_elems, flat, lstm_out = 2 * 3 * 4, 2 * 3 * 4, 2 * 3 * 4
    workspace = max(flat * 1, lstm_out * 9)  # the largest one-layer backward buffers (LSTM: 9 per output)
    activations = input_elems + flat + lstm_out * (1 + 6) + workspace
    assert summary.memory == {"weights": 4 * params, "gradients": 4 * params, "optimizer": 8 * params,
                              "activations": 4 * activations}


def test_config_round_trip_rebuilds_the_same_architecture():
    model = build_model("conv:4,3 pool:2 cols gru:8,bi cls:mean", (1, 8, None), 4)
    config = model.config()
    assert config == {"spec": "conv:4,3 pool:2 cols gru:8,bi cls:mean", "input_shape": [1, 8, None], "num_outputs": 4}
    again = SpecModel.from_config(config)
    again.load_state_dict(model.state_dict())
    x = torch.randn(2, 1, 8, 12)
    torch.testing.assert_close(again.eval()(x), model.eval()(x))


def test_register_op_extends_grammar_and_builder():
    from convrnn.layers.conv import Dropout

    schema = OpSchema("testnoise", "testnoise:P", "test-only op", args=(Param("p", grammar.PROB),))
    register_op("testnoise", schema, lambda op, shape, ctx: Dropout(op["p"]), accepts=["seq"])
    try:
        model = build_model("cols testnoise:0.5 lstm:3", (1, 4, 6), None)
        assert type(model.layers[1]).__name__ == "Dropout"
        assert format_spec(parse("testnoise:0.5")) == "testnoise:0.5"
        with pytest.raises(SpecError, match="testnoise expects a feature sequence"):
            build_model("testnoise:0.5", (1, 4, 6), None)
        with pytest.raises(ValueError, match="already registered"):
            grammar.register_schema(OpSchema("testnoise", "testnoise", args=(Param("n", POS_INT),)))
    finally:
        grammar.SCHEMAS.pop("testnoise", None)
        OPS.pop("testnoise", None)


def _doc_examples():
    docs = (ROOT / "docs" / "spec.md").read_text()
    section = docs.split("## Examples", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (.+?) \| `(.+?)` \| (\d+) \| `(.+?)` \|$", section, flags=re.M)
    return [(name, eval(shape), int(n), spec) for name, shape, n, spec in rows]  # shapes are tuple literals


def test_docs_examples_build_and_run():
    examples = _doc_examples()
    assert len(examples) >= 6
    for name, input_shape, num_outputs, spec in examples:
        model = build_model(spec, input_shape, num_outputs).eval()
        concrete = tuple(48 if s is None else s for s in input_shape)
        x = torch.randint(0, num_outputs, (1, *concrete)) if len(concrete) == 1 else torch.randn(1, *concrete)
        with torch.no_grad():
            y = model(x)
        assert y.shape[-1] == num_outputs, name


def test_an_op_registered_by_a_users_module_parses_and_builds(tmp_path, monkeypatch):
    (tmp_path / "convrnn_test_ops.py").write_text(
        "from convrnn.layers.conv import Dropout\n"
        "from convrnn.spec.builder import register_op\n"
        "from convrnn.spec.grammar import PROB, OpSchema, Param\n"
        "register_op('userop', OpSchema('userop', 'userop:P', args=(Param('p', PROB),)),\n"
        "            lambda op, shape, ctx: Dropout(op['p']), accepts=['seq'])\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        with pytest.raises(SpecError, match="userop"):
            parse("cols userop:0.1")  # unknown until the module that registers it is imported
        import convrnn_test_ops  # noqa: F401
        assert parse("cols userop:0.1")[1]["p"] == 0.1
        assert type(build_model("cols userop:0.1", (1, 2, 3)).layers[1]).__name__ == "Dropout"
    finally:
        grammar.SCHEMAS.pop("userop", None)
        OPS.pop("userop", None)
        sys.modules.pop("convrnn_test_ops", None)
