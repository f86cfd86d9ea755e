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
from convrnn.infer.export import export_onnx, onnx_generate
from convrnn.spec.presets import create_model
from convrnn.infer.sampling import sample

CASES = {  # recipe -> (preset, overrides, input shapes to run: different batches and variable sizes)
    "fonts": ("fonts", {"num_outputs": 5}, [(1, 1, 16, 64), (3, 1, 16, 64)]),
    "digits": ("digits", {"num_outputs": 1}, [(2, 3, 1, 28, 28), (1, 7, 1, 28, 28)]),
    "lines": ("crnn", {"num_outputs": 12, "filters": 8, "hidden_size": 16}, [(2, 1, 32, 64), (1, 1, 32, 160)]),
}


def run_ort(path, feeds):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)


@pytest.mark.parametrize("recipe", sorted(CASES))
def test_exported_forward_matches_pytorch_on_variable_shapes(recipe, tmp_path):
    preset, overrides, shapes = CASES[recipe]
    torch.manual_seed(0)
    model = create_model(preset, **overrides).eval()
    path = export_onnx(model, tmp_path / f"{recipe}.onnx")
    for shape in shapes:  # none of these is the example shape used while exporting
        x = torch.rand(shape)
        with torch.no_grad():
            want = model(x).numpy()
        (got,) = run_ort(path, {"x": x.numpy()})
        assert got.shape == want.shape
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
    assert not [w for w in caught if "onnx" in str(w.filename).lower() or issubclass(w.category, torch.jit.TracerWarning)]
    with pytest.raises(SystemExit) as e:
        main(["export", str(tmp_path / "missing")])
    assert e.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error:") and "missing" in last
