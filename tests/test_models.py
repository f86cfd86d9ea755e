"""Preset registry: every preset builds, runs, and its summary matches real shapes."""
# B batch, T time steps, C channels, H height, W width, V classes
import pytest
import torch

from convrnn.errors import ConfigError, SpecError
from convrnn.spec.presets import Preset, create_model, get_preset, list_models, preset_fields, register_model, split_preset
from convrnn.spec import parse


def _sample(input_shape, num_outputs, batch=2, unknown=24):
    concrete = tuple(unknown if s is None else s for s in input_shape)
    if len(concrete) == 1:
        return torch.randint(0, num_outputs or 2, (batch, *concrete))
    return torch.randn(batch, *concrete)


def test_registry_lists_the_presets():
    assert {"fwtk", "fonts"} <= set(list_models())
    assert list_models() == sorted(list_models())


@pytest.mark.parametrize("name", list_models())
def test_every_preset_builds_runs_and_summary_matches(name):
    torch.manual_seed(0)
    preset = get_preset(name)
    assert isinstance(preset, Preset) and preset.description and preset.task
    parse(preset.spec)
    model = create_model(name).eval()
    x = _sample(preset.input_shape, preset.num_outputs)
    summary = model.summary(batch_size=x.shape[0])
    with torch.no_grad():
        for row, layer in zip(summary.rows, model.layers):
            x = layer(x, None, None)[0] if layer.stateful else layer(x)
            assert len(row.shape) == x.dim() and all(s is None or s == a for s, a in zip(row.shape, x.shape)), row
    assert summary.params == sum(p.numel() for p in model.parameters())
    if preset.task == "classify":
        assert tuple(x.shape) == (2, preset.num_outputs)


def test_fwtk_matches_the_seed_model():
    preset = get_preset("fwtk")
    assert preset.spec == "blocks:8 conv:4,5x5,relu pool:2x2 flatten lstm:32 cls:last"
    assert preset.input_shape == (1, 16, 64) and preset.num_outputs == 5
    model = create_model("fwtk")
    # the seed says "20k parameters"; 104 conv + 20,736 LSTM + 165 head
    assert sum(p.numel() for p in model.parameters()) == 21005


def test_overrides_fill_the_template():
    model = create_model("fonts", num_classes=8, hidden_size=32, input_shape=[1, 16, None])
    assert model.num_outputs == 8 and model.input_shape == (1, 16, None)
    assert "lstm:32,bi" in model.spec
    out = model(torch.randn(2, 1, 16, 40))
    assert tuple(out.shape) == (2, 8)
    assert create_model("fwtk", num_outputs=3, filters=6).spec.startswith("blocks:8 conv:6,5x5")
    custom = get_preset("fonts", spec="cols lstm:8 cls:last", num_classes=4)
    assert custom.spec == "cols lstm:8 cls:last" and custom.num_outputs == 4


def test_unknown_model_and_field_are_config_errors():
    with pytest.raises(ConfigError, match=r"unknown model 'fwk'; did you mean: fwtk\?"):
        create_model("fwk")
    with pytest.raises(ConfigError, match="has no field 'hiden_size'; known: .*hidden_size"):
        get_preset("fonts", hiden_size=3)
    with pytest.raises(ConfigError, match="given twice"):
        get_preset("fonts", num_classes=3, num_outputs=4)
    assert "hidden_size" in preset_fields("fwtk")


def test_keyword_overrides_are_read_by_their_declared_types_not_pasted_into_the_spec():
    for overrides, message in [({"hidden_size": "x"}, "hidden_size: expected int, got 'x'"),
                               ({"hidden_size": 96.7}, "expected int, got 96.7"),
                               ({"filters": -3}, "must not be negative"),
                               ({"dropout": "0.2,layers=9"}, "expected float")]:
        with pytest.raises(ConfigError, match=message):
            create_model("crnn", **overrides)
    with pytest.raises(ConfigError, match="not a single word"):
        get_preset("fonts", pool="mean lstm:9")
    with pytest.raises(SpecError, match="num_outputs must be a positive integer"):
        create_model("crnn", num_outputs=0)
    assert "lstm:96," in create_model("crnn", hidden_size=96).spec


def test_a_preset_name_can_set_its_fields():
    assert split_preset("crnn") == ("crnn", {})
    # values stay text until get_preset reads each by the type the preset function declares for it
    assert split_preset("crnn:filters=16, hidden_size=96,dropout=0.1,kind=x") == \
        ("crnn", {"filters": "16", "hidden_size": "96", "dropout": "0.1", "kind": "x"})
    assert get_preset("crnn:dropout=0,num_layers=3").spec.endswith("lstm:128,bi,layers=3,dropout=0.0 ctc")
    assert get_preset("crnn:num_layers=1").spec.endswith("lstm:128,bi,layers=1 ctc")  # no dropout asked, none
    assert get_preset("crnn").spec.endswith("lstm:128,bi,layers=2,dropout=0.2 ctc")
    tanh = get_preset("digits:activation=tanh")  # a text field stays text
    assert tanh == get_preset("digits", activation="tanh") and tanh.spec != get_preset("digits").spec
    named = get_preset("crnn:filters=16,hidden_size=96", num_outputs=11)
    plain = get_preset("crnn", filters=16, hidden_size=96, num_outputs=11)
    assert named == plain and named.spec.startswith("conv:16,3x3") and "lstm:96,bi" in named.spec
    # the name's fields are what the user asked for: they win over the same field passed by the caller
    assert get_preset("crnn:filters=8", filters=64).spec.startswith("conv:8,3x3")
    assert "hidden_size" in preset_fields("crnn:filters=8")
    model = create_model("crnn:hidden_size=16", num_outputs=5)
    assert model(torch.randn(2, 1, 32, 40)).shape[-1] == 5


@pytest.mark.parametrize("name, message", [
    ("crnn:filters", "expected NAME:FIELD=VALUE"),
    ("crnn:filters=16,filters=8", "field 'filters' given twice"),
    ("crnn:filtres=16", "has no field 'filtres' to set here; known: .*filters"),
    ("crnn:input_shape=3", "has no field 'input_shape'"),
    ("crn:filters=16", "unknown model 'crn'; did you mean: crnn"),
    ("crnn:filters=16.5", r"preset 'crnn:filters=16.5': filters: expected int, got '16.5'"),
    ("crnn:dropout=half", "dropout: expected float, got 'half'"),
    ("crnn:num_layers=1,dropout=0.5", "dropout=0.5 acts between LSTM layers, and num_layers=1 has none"),
])
def test_bad_preset_fields_are_config_errors(name, message):
    with pytest.raises(ConfigError, match=message):
        get_preset(name)


def test_register_model_rejects_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda: None, name="fwtk")


def test_puigcerver2017_follows_the_paper_and_fits_ctc():
    preset = get_preset("puigcerver2017", num_outputs=134)
    ops = parse(preset.spec)
    convs = [op for op in ops if op.name == "conv"]
    assert [op.args["filters"] for op in convs] == [16, 32, 48, 64, 80]
    assert all(op.args["kernel"] == (3, 3) and op.args["act"] == "leaky" for op in convs)
    assert [op.name for op in ops].count("bn") == 5 and [op.name for op in ops].count("pool") == 3
    # dropout 0.2 right before blocks 3, 4 and 5; 0.5 before the BLSTM stack and before the labels
    names = [op.name for op in ops]
    before_convs = [ops[i - 1] for i, op in enumerate(ops) if op.name == "conv" and i > 0]
    assert [op.args.get("p") for op in before_convs if op.name == "drop"] == [0.2, 0.2, 0.2]
    (rnn,) = [op for op in ops if op.name == "lstm"]
    assert rnn.args["hidden"] == 256 and rnn.args["bi"] and rnn.args["layers"] == 5 and rnn.args["dropout"] == 0.5
    assert names[-3:] == ["lstm", "drop", "ctc"] and names[names.index("lstm") - 1] == "drop"
    small = get_preset("puigcerver2017:hidden_size=128,layers=3")
    assert "lstm:128,bi,layers=3,dropout=0.5" in small.spec
    # one frame per 8 pixels of width; a line of the preset's height whose characters are a third of
    # its height wide (narrow handwriting) still gets more than two frames per character
    height = preset.input_shape[1]
    model = create_model("puigcerver2017:hidden_size=32,layers=2", num_outputs=134).eval()
    width, chars = 60 * height // 3, 60
    with torch.no_grad():
        out = model.run(torch.rand(2, 1, height, width), torch.tensor([width, width // 2]), need_state=False)
    assert tuple(out.y.shape) == (2, width // 8, 134) and out.lengths.tolist() == [width // 8, width // 16]
    assert out.y.shape[1] >= 2 * chars
