"""ONNX export of every recipe's model: onnxruntime matches PyTorch within 1e-4, and the exported
language-model step generates the same 50 greedy characters as convrnn.infer.sampling.sample."""
# B batch, T time steps, C channels, H height, W width, V vocabulary
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch

from convrnn.cli import main
from convrnn.data.text import Vocab
from convrnn.errors import ConfigError
from convrnn.infer.export import export_onnx, is_language_model, onnx_generate
from convrnn.spec.presets import create_model, list_models
from convrnn.infer.sampling import sample

SMALL = {  # fields that keep a preset quick to export; presets not listed export with their defaults
    "charrnn": {"hidden_size": 32, "num_layers": 2}, "charlm": {"hidden_size": 32, "embed": 8},
    "crnn": {"filters": 8, "hidden_size": 16},
}


def run_ort(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


def _inputs(model, sizes: tuple[int, ...]) -> list[torch.Tensor]:
    """Inputs of two batch sizes, each variable size filled from ``sizes`` (none the exporter's example)."""
    out = []
    for batch, size in zip((1, 3), sizes):
        shape = [batch, *(size if s is None else s for s in model.input_shape)]
        out.append(torch.randint(0, model.num_outputs, shape) if len(model.input_shape) == 1 else torch.rand(shape))
    return out


@pytest.mark.parametrize("name", list_models())
def test_every_preset_exports_and_onnx_matches_pytorch(name, tmp_path):
    """Forward models give the same outputs as PyTorch for other batch sizes and variable sizes than the
    traced example; language models export one step with explicit state; a model whose layers cannot
    be traced for every input size is refused with one line."""
    torch.manual_seed(0)
    model = create_model(name, **SMALL.get(name, {})).eval()
    if name == "pham2014":
        with pytest.raises(ConfigError, match="MDLSTM2d layers loop over the input in Python"):
            export_onnx(model, tmp_path / f"{name}.onnx")
        assert not list(tmp_path.iterdir())  # nothing written
        return
    path = export_onnx(model, tmp_path / f"{name}.onnx")
    for x in _inputs(model, (4, 7) if len(model.input_shape) in (1, 4) else (40, 160)):
        with torch.no_grad():
            want = model.run(x).y.numpy()
        feeds = {"x": x.numpy()}
        if is_language_model(model):  # the step also takes the recurrent state: start from zeros
            feeds.update({i.name: np.zeros([x.shape[0] if d == "batch" else d for d in i.shape], np.float32)
                          for i in ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).get_inputs()[1:]})
        got = run_ort(path, feeds)[0]
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_lm_step_with_explicit_state_matches_pytorch(tmp_path):
    torch.manual_seed(0)
    model = create_model("charlm", num_outputs=20, hidden_size=32, embed=8).eval()
    path = export_onnx(model, tmp_path / "lm.onnx")
    x = torch.randint(0, 20, (3, 9))
    with torch.no_grad():
        first = model.run(x[:, :5])
        second = model.run(x[:, 5:], state=first.state)
    h, c = first.state[0]
    logits, h2, c2 = run_ort(path, {"x": x[:, 5:].numpy(), "h0": h.numpy(), "c0": c.numpy()})
    np.testing.assert_allclose(logits, second.y.numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(h2, second.state[0][0].numpy(), atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(c2, second.state[0][1].numpy(), atol=1e-4, rtol=1e-4)


def test_exported_charlm_generates_pytorchs_greedy_50_characters(tmp_path):
    text = "the quick brown fox jumps over the lazy dog. " * 4
    vocab = Vocab.from_text(text)
    torch.manual_seed(3)
    model = create_model("charlm", num_outputs=len(vocab), hidden_size=48, embed=8)
    ids = torch.as_tensor(vocab.encode(text)).unsqueeze(0)  # (T,) -> (1, T)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):  # a little training, so greedy generation is not one repeated symbol
        logits = model.run(ids[:, :-1]).y
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())  # (B*T, V)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    path = export_onnx(model, tmp_path / "lm.onnx")
    prime = "the quick"
    (want,) = sample(model, vocab, prime=prime, length=50, greedy=True)
    ids = onnx_generate(path, list(vocab.encode(prime)), 50, banned=vocab.unk_id)
    got = vocab.decode(np.asarray(ids))
    assert len(got) == 50 and got == want
    assert len(set(got)) > 1  # not a degenerate single-symbol string


def test_cli_export_of_a_run_and_bad_format(tmp_path, capsys):
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as e:
        main(["train", "fonts", "--device", "cpu", "--samples-per-font", "8", "--max-steps", "1",
              "--run-dir", str(run)])
    assert e.value.code == 0
    with pytest.raises(SystemExit) as e:
        main(["export", str(run), "--format", "onnx"])
    assert e.value.code == 0
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(SystemExit) as e:
            main(["export", str(run), "--format", "onnx"])
    assert e.value.code == 0
    out, err = capsys.readouterr()
    assert (run / "model.onnx").is_file()
    assert out.count(str(run / "model.onnx")) == 1 and out.startswith(f"wrote {run / 'model.onnx'} (") and not err
    assert "every sequence of a batch runs to its full length" in out
    assert not [w for w in caught if "onnx" in str(w.filename).lower() or issubclass(w.category, torch.jit.TracerWarning)]
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "missing")])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and "missing" in last


def test_cli_export_of_a_language_model_says_it_is_one_step(tmp_path, capsys):
    corpus = tmp_path / "c.txt"
    corpus.write_text("to be or not to be " * 200, encoding="utf-8")
    with pytest.raises(SystemExit) as e:
        main(["-q", "train", "charlm", "--data", str(corpus), "--max-steps", "1", "--spec", "embed:4 lstm:8 lm",
              "--run-dir", str(tmp_path / "lm")])
    assert e.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "lm")])
    out = capsys.readouterr().out
    assert e.value.code == 0 and "one step with its state" in out and "full length" not in out
