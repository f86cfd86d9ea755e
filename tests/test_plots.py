"""viz.plots: first-layer filter panels (count and content), learning curves, atomic PNG writes."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image

from convrnn.errors import DataError
from convrnn.spec.builder import build_model
from convrnn.train.checkpoint import save_checkpoint
from convrnn.viz.plots import filters_figure, first_conv_weights, plot_curves, plot_filters


def fake_run(path, spec, input_shape, num_outputs=1, seed=0):
    """A run directory holding only checkpoints/best.pt of a freshly built model."""
    torch.manual_seed(seed)
    model = build_model(spec, input_shape, num_outputs)
    (path / "checkpoints").mkdir(parents=True)
    save_checkpoint(path / "checkpoints" / "best.pt", {"spec": spec, "input_shape": list(input_shape),
                                                      "num_outputs": num_outputs, "model": model.state_dict()})
    return path, model


def write_metrics(path, rows):
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["step", "epoch", "split", "metric", "value", "time"])
        for row in rows:
            w.writerow([*row, 0.0])
    return path


def test_first_conv_weights_are_the_first_layers(tmp_path):
    run, model = fake_run(tmp_path / "a", "conv:8,4x4,tanh,valid conv:16,3x3,tanh,valid flatten gru:8 reg:last",
                          (None, 1, 12, 12))
    w = first_conv_weights(run)
    assert w.shape == (8, 1, 4, 4)
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    np.testing.assert_array_equal(w, first.weight.detach().numpy())


def test_one_panel_per_kernel_and_each_shows_its_kernel():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(8, 1, 4, 4)), rng.normal(size=(5, 2, 3, 3))  # 8 and 10 (kernel, channel) panels
    fig = filters_figure([a, b], ["a", "b"])
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 8 + 10
    row0 = [ax for ax in shown[:8]]
    for j, ax in enumerate(row0):
        np.testing.assert_allclose(np.asarray(ax.images[0].get_array()), a[j, 0])
    np.testing.assert_allclose(np.asarray(shown[8 + 3].images[0].get_array()), b.reshape(10, 3, 3)[3])
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_plot_filters_writes_a_png_for_several_runs(tmp_path):
    r1, _ = fake_run(tmp_path / "seq", "conv:8,4x4,tanh,valid flatten gru:8 reg:last", (None, 1, 12, 12))
    r2, _ = fake_run(tmp_path / "cnn", "conv:6,3x3 pool:2x2 flatten cls:last", (1, 12, 12), num_outputs=10)
    out = tmp_path / "pics" / "filters.png"
    result = plot_filters([r1, r2], out)
    assert result.path == out and result.panels == [8, 6]
    with Image.open(out) as im:
        assert im.format == "PNG" and 600 <= im.size[0] <= 1400  # readable at laptop width
    assert [p.name for p in out.parent.iterdir()] == ["filters.png"]  # no temporary file left


def test_model_without_convolution_is_a_clear_error(tmp_path):
    run, _ = fake_run(tmp_path / "noconv", "flatten gru:4 reg:last", (None, 1, 6, 6))
    with pytest.raises(DataError, match="expected a model with a convolution layer"):
        plot_filters([run], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_curves_from_several_runs(tmp_path):
    a = write_metrics(tmp_path / "a", [(10, 0, "train", "loss", 1.0), (20, 0, "train", "loss", 0.5),
                                       (20, 0, "val", "loss", 0.6), (20, 0, "val", "exact", 0.4),
                                       (20, 0, "val", "mse", 3.0), (20, 0, "val", "exact_len2", 0.3)])
    b = write_metrics(tmp_path / "b", [(10, 0, "train", "loss", 2.0), (10, 0, "val", "loss", 1.5),
                                       (10, 0, "val", "exact", 0.1), (10, 0, "val", "mse", 9.0)])
    out = plot_curves([a, b], tmp_path / "curves.png")
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] >= 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "curves.png"]
    # a metric no run logged (a misspelt name) is refused, not drawn as an empty panel
    with pytest.raises(DataError, match="--metric acuracy: no run logged it; logged: exact, exact_len2, loss, mse"):
        plot_curves([a, b], tmp_path / "typo.png", metrics=["loss", "acuracy"])
    assert not (tmp_path / "typo.png").exists()


def test_curves_need_metrics(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="metrics.csv"):
        plot_curves([tmp_path / "empty"], tmp_path / "c.png")
    assert not (tmp_path / "c.png").exists()


def test_a_ctc_plot_draws_what_greedy_decoding_emits_however_unsure(tmp_path):
    """An untrained model's probabilities are all near 1/V: the labels that win frames are drawn anyway."""
    from convrnn.viz.ctc_plot import characters_to_show, plot_ctc

    alphabet = list("abcdefghij")
    probs = np.full((8, 11), 1 / 11)
    probs[:4, 3] += 0.01  # 'c' wins the first four frames, 'e' the last four, far below 0.1
    probs[4:, 5] += 0.01
    probs /= probs.sum(axis=1, keepdims=True)
    assert characters_to_show(probs, alphabet) == [3, 5]
    sure = np.zeros((8, 11))
    sure[:, 0], sure[2, 0], sure[2, 7] = 1.0, 0.4, 0.6  # blank everywhere but one frame of 'g'
    assert characters_to_show(sure, alphabet) == [7]
    plot_ctc(np.zeros((16, 64), np.uint8), probs, alphabet, tmp_path / "unsure.png", text="ce")
    assert Image.open(tmp_path / "unsure.png").size[0] > 300


def test_plot_curves_picks_scores_not_counts_for_its_panels():
    from convrnn.viz.plots import default_curve_metrics

    rows = [{"split": "val", "metric": m} for m in ("loss", "cer", "chars", "lines", "unseen_chars", "wer")]
    assert default_curve_metrics([rows]) == ["loss", "cer", "wer"]
