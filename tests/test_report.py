"""The HTML run report and ``plot confusion``: a tiny fonts run end to end, and the one-line errors."""
import csv
import re

import numpy as np
import pytest
from PIL import Image

from convrnn.cli import main

TINY = ["--samples-per-font", "60", "--max-steps", "6", "--batch-size", "16"]


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture(scope="module")
def fonts_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fonts-tiny"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "fonts", "--run-dir", str(run), *TINY])
    assert exc.value.code == 0
    return run


@pytest.fixture(scope="module")
def report_html(fonts_run):
    out = fonts_run.parent / "report.html"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "report", str(fonts_run), "--out", str(out), "--max-batches", "2"])
    assert exc.value.code == 0
    return out.read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(report_html, fonts_run):
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', report_html)
    assert len(srcs) >= 4  # curves, filters, confusion
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in report_html and "https://" not in report_html
    assert "<link" not in report_html and "<script" not in report_html
    assert list(fonts_run.parent.glob("report.html*")) == [fonts_run.parent / "report.html"]  # no temp left


def test_report_holds_config_summary_and_every_metric(report_html, fonts_run):
    assert "Config" in report_html and "samples_per_font" in report_html and "<span>samples_per_font</span><span>60</span>" in report_html
    # the model summary table: every op of the spec with its parameter count
    assert "conv:16,3x3" in report_html and "lstm:64,bi" in report_html and "Recurrent" in report_html
    with open(fonts_run / "metrics.csv", newline="") as f:
        names = {r["metric"] for r in csv.DictReader(f)}
    assert {"loss", "accuracy", "samples_per_s"} <= names
    for name in names:
        assert f'alt="learning curve: {name}"' in report_html
    assert "samples/s" in report_html  # throughput table
    assert "torch" in report_html and "CPU" in report_html


def test_report_has_a_confusion_matrix_with_class_names(report_html):
    assert 'alt="confusion matrix"' in report_html
    for name in ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10"):
        assert f"<td>{name}</td>" in report_html
    assert 'alt="first-layer filters"' in report_html


def test_plot_confusion_writes_a_png(fonts_run, capsys, tmp_path):
    out = tmp_path / "conf.png"
    code, stdout, err = run_cli(capsys, "-q", "plot", "confusion", str(fonts_run), "--out", str(out),
                                "--max-batches", "1")
    assert code == 0, err
    assert "wrote" in stdout
    img = np.asarray(Image.open(out).convert("L"))
    assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 10


def test_confusion_counts_equal_the_eval_accuracy(fonts_run):
    from convrnn.recipes.runner import evaluate
    from convrnn.viz.confusion import run_confusion
    counts, classes = run_confusion(fonts_run, max_batches=0)  # 0: every batch, like `convrnn eval`
    assert counts.shape == (5, 5) and len(classes) == 5
    metrics = evaluate(str(fonts_run)).metrics
    assert np.trace(counts) / counts.sum() == pytest.approx(metrics["accuracy"])
    assert counts.sum() == 60 * 5 * 0.2  # the validation fraction of 5 fonts x 60 samples


def test_report_without_checkpoints_is_a_one_line_error(capsys, tmp_path):
    run = tmp_path / "empty-run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text('{"recipe": "fonts"}')
    code, out, err = run_cli(capsys, "report", str(run))
    assert code == 2
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "best.pt" in err
    assert not (run / "report.html").exists()
    code, out, err = run_cli(capsys, "report", str(tmp_path / "nowhere"))
    assert code == 2 and "no such directory" in err and len(err.strip().splitlines()) == 1


def test_plot_confusion_refuses_a_run_that_is_not_classification(capsys, tmp_path):
    code, out, err = run_cli(capsys, "plot", "confusion", str(tmp_path / "missing"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_missing_recipe_piece_becomes_a_note(monkeypatch, fonts_run):
    from convrnn.viz import report_sections

    def broken(ctx):
        raise ImportError("No module named 'convrnn.viz.not_yet'")
    monkeypatch.setitem(report_sections.RECIPE_SECTIONS, "fonts", broken)
    sections = report_sections.recipe_sections(str(fonts_run), "fonts", max_batches=1)
    assert len(sections) == 1 and "Not available" in sections[0].body and "not_yet" in sections[0].body


# ------------------------------------------------------------------------------ TensorBoard images

def _event_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_kernel_grid_tiles_each_kernel_on_its_own_scale():
    from convrnn.train.tb_images import kernel_grid
    w = np.stack([np.arange(9.0).reshape(1, 3, 3), -5 * np.eye(3)[None]])  # (F=2, C=1, 3, 3)
    grid = kernel_grid(w, tile=6, gap=2)  # 3x3 kernels enlarged twice -> 6x6 tiles
    assert grid.shape == (6, 6 + 2 + 6)
    np.testing.assert_allclose(grid[:, :6][::2, ::2], np.arange(9.0).reshape(3, 3) / 8)
    np.testing.assert_allclose(grid[:, 8:][::2, ::2], 1 - np.eye(3))  # -5 on the diagonal is the minimum
    assert (grid[:, 6:8] == 1).all()  # the gap between tiles is white


def test_training_writes_filter_images_to_tensorboard(fonts_run):
    acc = _event_tags(fonts_run)
    assert "filters/first_conv" in acc.Tags()["images"]
    image = acc.Images("filters/first_conv")[-1]
    assert image.step == 6 and image.width > 100  # 16 kernels of 3x3, enlarged


def test_language_model_samples_go_to_tensorboard_as_text(tmp_path):
    from types import SimpleNamespace

    from convrnn.data.text import Vocab
    from convrnn.spec.builder import build_model
    from convrnn.train.rundir import RunDir
    from convrnn.train.tb_images import TensorBoardImages

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    vocab = Vocab.from_text("to be or not to be\n")
    model = build_model("embed:8 lstm:16 lm", (None,), len(vocab))
    run_dir = RunDir(tmp_path / "lm")
    trainer = SimpleNamespace(run_dir=run_dir, model=model, device=torch.device("cpu"), pos=SimpleNamespace(step=3),
                              meta={"meta": {"vocab": vocab.to_dict()}})
    rng = torch.get_rng_state()
    TensorBoardImages(temperatures=(0.5,), sample_length=30).on_validation(trainer, {})
    assert torch.equal(rng, torch.get_rng_state())  # sampling leaves training's random stream alone
    run_dir.close()
    acc = _event_tags(tmp_path / "lm")
    assert "samples/temperature_0.5/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("samples/temperature_0.5/text_summary")[0].tensor_proto.string_val[0].decode()
    assert len(text.replace("\n", "").replace("    ", "")) >= 20 and set(text) <= set("to ber n\n")
    assert "images" not in acc.Tags() or not acc.Tags()["images"]  # no convolution, no filter image


# ---------------------------------------------------------------------- the other recipes' sections

def _train(argv):
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", *argv])
    assert exc.value.code == 0


def _texts(body, css):
    import html as html_lib
    return [html_lib.unescape(t) for t in re.findall(rf'<pre class="{css}">(.*?)</pre>', body, re.S)]


def test_digits_section_shows_error_per_length_up_to_twice_the_training_length(tmp_path):
    from test_digits import write_digits

    from convrnn.viz.report_sections import recipe_sections
    data = write_digits(tmp_path / "mnist")
    run = tmp_path / "digits"
    _train(["digits", "--op", "sum", "--max-len", "2", "--data-dir", str(data), "--run-dir", str(run),
            "--max-steps", "2", "--batch-size", "16", "--num-train", "32", "--threads", "1",
            "--set", "data.num_val=16", "--set", "data.num_test=32"])
    [section] = recipe_sections(str(run), "digits", max_batches=2)
    assert section.title == "Error per sequence length" and "test split" in section.body
    lengths = [int(n) for n in re.findall(r'<tr><td class="num">(\d+)</td>', section.body)]
    assert lengths == [1, 2, 3, 4]  # test sequences go to 2N = 4
    assert section.body.count("<img") == 1


def test_lines_sections_show_worst_lines_and_ctc_alignments(tmp_path):
    from convrnn.viz.report_sections import recipe_sections
    run = tmp_path / "lines"
    _train(["lines", "--synthetic", "digits", "--mnist-dir", "sklearn", "--num-train", "32", "--height", "16",
            "--max-digits", "3", "--max-steps", "2", "--batch-size", "16", "--run-dir", str(run),
            "--set", "data.num_val=12", "--set", "data.num_test=4", "--spec", "conv:4,3x3 pool:2x2 cols lstm:8,bi ctc"])
    worst, ctc = recipe_sections(str(run), "lines", max_batches=1)
    assert worst.title == "Worst-read lines" and ctc.title == "CTC alignments"
    rows = re.findall(r"<tr><td>(val[^<]*)</td><td class=\"num\">([\d.]+)</td><td>([^<]*)</td>", worst.body)
    assert 1 <= len(rows) <= 8
    cers = [float(c) for _, c, _ in rows]
    assert cers == sorted(cers, reverse=True)  # worst first
    assert all(ref.isdigit() for _, _, ref in rows)  # references are the digit strings
    assert ctc.body.count("<img") == min(3, len(rows))


def test_charlm_section_samples_at_three_temperatures(tmp_path):
    from convrnn.viz.report_sections import SAMPLE_LENGTH, SAMPLE_TEMPERATURES, recipe_sections
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question\n" * 40, encoding="utf-8")
    run = tmp_path / "charlm"
    _train(["charlm", "--data", str(text), "--run-dir", str(run), "--max-steps", "2", "--batch-size", "4",
            "--set", "data.seq_len=16", "--spec", "embed:8 lstm:16 lm"])
    [section] = recipe_sections(str(run), "charlm")
    samples = _texts(section.body, "sample")
    assert len(samples) == len(SAMPLE_TEMPERATURES) == 3
    assert all(len(s) == SAMPLE_LENGTH and set(s) <= set(text.read_text()) for s in samples)
