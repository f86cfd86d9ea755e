"""The HTML run report and ``plot confusion``: a tiny fonts run end to end, and the one-line errors."""
import base64
import csv
import html as html_lib
import io
import re
import shutil

import numpy as np
import pytest
from PIL import Image


from helpers import run_cli, train_cli

# 5 fonts x 40 images: 160 training images (10 batches an epoch, 30 steps), 40 validation ones; a
# validation per epoch and training metrics every 5 steps, so the learning curves have several points
TINY = ["--samples-per-font", "40", "--epochs", "3", "--batch-size", "16", "--set", "train.log_every=5"]
VAL_SAMPLES = 40



@pytest.fixture(scope="module")
def fonts_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fonts-tiny"
    train_cli("-q", "train", "fonts", "--run-dir", str(run), *TINY)
    return run


@pytest.fixture(scope="module")
def report_html(fonts_run):
    out = fonts_run.parent / "report.html"
    train_cli("-q", "report", str(fonts_run), "--out", str(out), "--max-batches", "2")
    return out.read_text(encoding="utf-8")


def test_report_is_one_self_contained_file(report_html, fonts_run):
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', report_html)
    assert len(srcs) >= 4  # curves, filters, confusion
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "http://" not in report_html and "https://" not in report_html
    assert "<link" not in report_html and "<script" not in report_html
    assert list(fonts_run.parent.glob("report.html*")) == [fonts_run.parent / "report.html"]  # no temp left


def section(page, anchor):
    """The body of the report's ``<section id=anchor>``."""
    found = re.search(rf'<section id="{anchor}">(.*?)</section>', page, re.S)
    assert found, f"no section {anchor}"
    return found.group(1)


def cells(body):
    """The text of every row's cells: [[cell, ...], ...] (tags stripped, entities decoded)."""
    return [[html_lib.unescape(re.sub(r"<[^>]+>", "", c)) for c in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row, re.S)]
            for row in re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)]


def metrics_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_results_come_first_with_final_best_and_run_totals(report_html, fonts_run):
    from convrnn.train.checkpoint import load_checkpoint, load_latest_checkpoint
    assert report_html.index('<section id="results">') < report_html.index('<section id="config">')
    assert report_html.index('<section id="results">') == report_html.index("<section")  # right under the title
    body = section(report_html, "results")
    last, best = load_latest_checkpoint(fonts_run), load_checkpoint(fonts_run / "checkpoints" / "best.pt")
    assert last["step"] == 30 and last["epoch"] == 3
    stats = dict((k, v) for v, k in re.findall(r'<span class="v">(.*?)</span><span class="k">(.*?)</span>', body))
    assert stats["steps trained"] == "30" and stats["epochs completed"] == "3"
    assert stats["training time"] == f"{last['train_time']:.1f} s"
    val = [r for r in metrics_rows(fonts_run) if r["split"] == "val"]
    final_step = max(int(r["step"]) for r in val)
    final = {r["metric"]: float(r["value"]) for r in val if int(r["step"]) == final_step}
    table_rows = {r[0]: r[1:] for r in cells(body)}
    assert table_rows["val metric"] == [f"final (step {final_step})", f"best checkpoint (step {best['step']})"]
    assert table_rows["accuracy *"] == [f"{final['accuracy']:.4g}", f"{best['metrics']['accuracy']:.4g}"]
    assert table_rows["loss"] == [f"{final['loss']:.4g}", f"{best['metrics']['loss']:.4g}"]
    # errors are a count: out of the 40 validation samples
    assert table_rows["errors"] == [f"{int(final['errors'])}/{VAL_SAMPLES}", f"{int(best['metrics']['errors'])}/{VAL_SAMPLES}"]
    assert stats["final val errors"] == f"{int(final['errors'])}/{VAL_SAMPLES}"
    assert "The run trained 30 steps (3 epochs)" in body and "it ran all 3 epochs" in body


def test_results_show_the_runs_totals_when_best_is_an_early_checkpoint(fonts_run, tmp_path):
    """best.pt from step 10 of a 30-step run: the page gives the run's 30 steps and best.pt's step 10."""
    from convrnn.viz.report import build_report
    run = tmp_path / "early-best"
    shutil.copytree(fonts_run, run)
    shutil.copy(run / "checkpoints" / "step-00000010.pt", run / "checkpoints" / "best.pt")
    page = build_report(run, max_batches=1).read_text(encoding="utf-8")
    body = section(page, "results")
    rows = {r[0]: r[1:] for r in cells(body)}
    assert rows["val metric"] == ["final (step 30)", "best checkpoint (step 10)"]
    assert "steps trained</span>" in body and '<span class="v">30</span><span class="k">steps trained' in body
    assert "best.pt val accuracy (step 10)" in body and "checkpoints/best.pt is from step 10 (after 1 epoch)" in body
    # without last.pt and the step files the totals come from metrics.csv (no training seconds there)
    for f in (run / "checkpoints").glob("*.pt"):
        if f.name != "best.pt":
            f.unlink()
    body = section(build_report(run, max_batches=1).read_text(encoding="utf-8"), "results")
    assert '<span class="v">30</span><span class="k">steps trained' in body and "training time" not in body
    assert "(from metrics.csv)" in body


def test_config_is_one_table_grouped_by_section(report_html):
    body = section(report_html, "config")
    assert body.count("<table") == 1 and 'class="cols"' not in body
    groups = re.findall(r'<tr class="group"><th colspan="\d+">(\w+)</th></tr>', body)
    assert groups == ["run", "model", "data", "train"]
    rows = cells(body)
    data = rows[[r[0] for r in rows].index("data") + 1:[r[0] for r in rows].index("train")]
    pairs = {k: v for r in data for k, v in zip(r[::2], r[1::2]) if k}
    assert pairs["samples_per_font"] == "40" and pairs["height"] == "16"  # every data key sits under data
    assert '<td class="key">samples_per_font</td><td class="set">40</td>' in body  # not the recipe's 2000
    assert '<td class="key">height</td><td>16</td>' in body  # the default: not marked


def test_report_holds_model_environment_and_every_changing_metric(report_html, fonts_run):
    # the model summary table: every op of the spec with its parameter count
    assert "conv:16,3x3" in report_html and "lstm:64,bi" in report_html and "Recurrent" in report_html
    names = {r["metric"] for r in metrics_rows(fonts_run)}
    assert {"loss", "accuracy", "errors", "lr", "samples_per_s"} <= names
    for name in names - {"samples"}:  # three validations and six training windows: every metric changed
        assert f'alt="learning curve: {name}"' in report_html
    # but the number of validation samples, the denominator of errors, which is the same every time
    assert 'alt="learning curve: samples"' not in report_html and "samples (constant 40)" in report_html
    assert "samples/s" in report_html  # throughput table
    assert "torch" in report_html and "CPU" in report_html


def _rows(points):
    """metrics.csv rows from {(split, metric): [(step, value), ...]}."""
    return [{"step": s, "epoch": 0, "split": split, "metric": m, "value": v, "time": 0.0}
            for (split, m), pts in points.items() for s, v in pts]


def test_curves_skip_constant_and_single_point_metrics():
    from convrnn.viz.report import curves_section
    rows = _rows({("train", "loss"): [(5, 2.0), (10, 1.0), (15, 0.5)], ("val", "loss"): [(10, 1.2), (15, 0.9)],
                  ("train", "lr"): [(5, 3e-3), (10, 3e-3), (15, 3e-3)],
                  ("val", "errors"): [(15, 7.0)], ("val", "accuracy"): [(10, 0.5), (15, 0.75)]})
    body = curves_section(rows).body
    assert re.findall(r'alt="learning curve: (\w+)"', body) == ["loss", "accuracy"]
    assert "Not plotted: errors (a single point: val 7 at step 15); lr (constant 0.003)." in html_lib.unescape(body)
    assert "2 of the 4 metrics" in body


def test_lr_is_on_a_linear_axis_and_a_wide_loss_on_a_log_one():
    import matplotlib.pyplot as plt

    from convrnn.viz.report import curve_figure
    decay = [(s, 3e-3 * 0.5 ** s) for s in range(12)]  # spans 2048x
    for name, scale in (("lr", "linear"), ("loss", "log"), ("accuracy", "linear")):
        fig = curve_figure(name, {"train": decay})
        ax = fig.axes[0]
        assert ax.get_yscale() == scale, name
        assert min(t.get_fontsize() for t in ax.get_xticklabels() + ax.get_yticklabels()) >= 9  # 9pt at shown size
        plt.close(fig)


def test_report_has_a_confusion_matrix_with_class_names(report_html):
    assert 'alt="confusion matrix"' in report_html
    for name in ("DejaVuSans", "DejaVuSerif", "STIXGeneral", "cmr10"):
        assert f"<td>{name}</td>" in report_html


def test_misclassified_examples_show_the_most_confident_mistakes(report_html, fonts_run):
    from convrnn.viz.confusion import run_confusion
    counts, classes = run_confusion(fonts_run, max_batches=2)
    errors = int(counts.sum() - np.trace(counts))
    assert errors > 0  # a 30-step model still confuses fonts: the grid has something to show
    body = section(report_html, "misclassified")
    tiles = re.findall(r'<figure class="sample"><img class="px" width="(\d+)" alt="([^"]*)" src="data:image/png;'
                       r'base64,[^"]+"><figcaption>true <b>([^<]+)</b><br>predicted <b>([^<]+)</b> '
                       r'<span class="p">\(p ([\d.]+)\)</span>', body)
    assert len(tiles) == min(16, errors)
    assert all(true != pred and true in classes and pred in classes for _, _, true, pred, _ in tiles)
    probs = [float(p) for *_, p in tiles]
    assert probs == sorted(probs, reverse=True)  # the most confident first
    assert all(int(w) == 64 * 3 for w, *_ in tiles)  # 16x64 images enlarged 3x to about 48 px high
    assert f"errors {errors}/{VAL_SAMPLES}" in body


def test_first_layer_filters_are_enlarged_each_on_its_own_scale(report_html):
    from convrnn.viz.report import filter_tiles
    w = np.stack([np.arange(9.0).reshape(1, 3, 3), -5 * np.eye(3)[None]])  # (F=2, C=1, 3, 3)
    picture, scale = filter_tiles(w, tile=48)
    assert scale == 16 and picture.shape == (3 * 16 + 2, 2 * (3 * 16 + 2) + 6)
    first = picture[1:49, 1:49][::16, ::16]  # inside the frame, one pixel per kernel weight
    np.testing.assert_array_equal(first, np.round(np.arange(9.0).reshape(3, 3) / 8 * 255))
    second = picture[1:49, 57:105][::16, ::16]
    np.testing.assert_array_equal(second, np.where(np.eye(3) > 0, 0, 255))  # -5 on the diagonal is black
    assert (picture[0, :50] == 128).all() and (picture[:, 50:56] == 255).all()  # gray frame, white gap
    shown = re.search(r'<img class="px wide" width="(\d+)" alt="first-layer filters"', report_html)
    assert shown and int(shown.group(1)) >= 16 * 40  # 16 kernels of 3x3, each about 48 px wide


def test_plot_confusion_writes_a_png(fonts_run, capsys, tmp_path):
    out = tmp_path / "conf.png"
    code, stdout, err = run_cli(capsys, "-q", "plot", "confusion", str(fonts_run), "--out", str(out),
                                "--max-batches", "1")
    assert code == 0, err
    assert "wrote" in stdout
    img = np.asarray(Image.open(out).convert("L"))
    assert img.shape[0] > 200 and img.shape[1] > 200 and img.std() > 10


def test_bad_metrics_or_config_file_is_a_one_line_error(fonts_run, capsys, tmp_path):
    for name, text, expected in (("metrics.csv", "step,epoch,split,metric,value,time\n5,0,train,loss,oops,1\n",
                                  "metrics.csv: expected columns"),
                                 ("config.json", "{not json", "config.json: expected the run's JSON config")):
        run = tmp_path / name
        shutil.copytree(fonts_run, run)
        (run / name).write_text(text, encoding="utf-8")
        code, out, err = run_cli(capsys, "report", str(run))
        assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
        assert expected in err
        assert not (run / "report.html").exists() and not list(run.glob(".report.html*"))


def test_confusion_counts_equal_the_eval_accuracy(fonts_run):
    from convrnn.infer.run import evaluate_run
    from convrnn.viz.confusion import run_confusion
    counts, classes = run_confusion(fonts_run, max_batches=0)  # 0: every batch, like `convrnn eval`
    assert counts.shape == (5, 5) and len(classes) == 5
    metrics = evaluate_run(str(fonts_run)).metrics
    assert np.trace(counts) / counts.sum() == pytest.approx(metrics["accuracy"])
    assert counts.sum() == VAL_SAMPLES  # the validation fraction of 5 fonts x 40 samples


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
    # a checkpoint file given for the run: the report names the run directory it belongs to
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    code, out, err = run_cli(capsys, "report", str(run / "checkpoints" / "best.pt"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "is a file" in err and f"give its run directory {run}" in err


def test_plot_confusion_refuses_a_run_that_is_not_classification(capsys, tmp_path):
    code, out, err = run_cli(capsys, "plot", "confusion", str(tmp_path / "missing"))
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_recipe_sections_that_cannot_be_made_become_a_note(monkeypatch, fonts_run):
    from convrnn.errors import DataError
    from convrnn.infer.run import load_run
    from convrnn.recipes.fonts import FontsRecipe
    from convrnn.viz.report import recipe_report

    def broken(self, ctx):
        raise DataError("/data/moved: no such folder")
    monkeypatch.setattr(FontsRecipe, "report_sections", broken)
    sections, _ = recipe_report(load_run(fonts_run), max_batches=1)
    assert len(sections) == 1 and "Not available" in sections[0].body and "/data/moved" in sections[0].body


# ------------------------------------------------------------------------------ TensorBoard images

def _event_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def test_kernel_grid_tiles_each_kernel_on_its_own_scale():
    from convrnn.train.tensorboard import kernel_grid
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
    assert image.step == 30 and image.width > 100  # 16 kernels of 3x3, enlarged


def test_language_model_samples_go_to_tensorboard_as_text(tmp_path):
    from types import SimpleNamespace

    from convrnn.data.text import Vocab
    from convrnn.spec.builder import build_model
    from convrnn.train.rundir import RunDir
    from convrnn.recipes.charlm import TensorBoardSamples
    from convrnn.tasks.lm import LanguageModelTask

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    vocab = Vocab.from_text("to be or not to be\n")
    model = build_model("embed:8 lstm:16 lm", (None,), len(vocab))
    run_dir = RunDir(tmp_path / "lm")
    trainer = SimpleNamespace(run_dir=run_dir, model=model, device=torch.device("cpu"), pos=SimpleNamespace(step=3),
                              task=LanguageModelTask(vocab))
    rng = torch.get_rng_state()
    TensorBoardSamples(temperatures=(0.5,), length=30).on_validation(trainer, {})
    assert torch.equal(rng, torch.get_rng_state())  # sampling leaves training's random stream alone
    run_dir.close()
    acc = _event_tags(tmp_path / "lm")
    assert "samples/temperature_0.5/text_summary" in acc.Tags()["tensors"]
    text = acc.Tensors("samples/temperature_0.5/text_summary")[0].tensor_proto.string_val[0].decode()
    assert len(text.replace("\n", "").replace("    ", "")) >= 20 and set(text) <= set("to ber n\n")
    assert "images" not in acc.Tags() or not acc.Tags()["images"]  # no convolution, no filter image


# ---------------------------------------------------------------------- the other recipes' sections

def _train(argv):
    train_cli("-q", "train", *argv)


def _texts(body, css):
    import html as html_lib
    return [html_lib.unescape(t) for t in re.findall(rf'<pre class="{css}">(.*?)</pre>', body, re.S)]


def test_digits_section_shows_error_per_length_up_to_twice_the_training_length(tmp_path):
    from helpers import write_digits

    from convrnn.infer.run import load_run
    from convrnn.viz.report import recipe_report
    data = write_digits(tmp_path / "mnist")
    run = tmp_path / "digits"
    _train(["digits", "--op", "sum", "--max-len", "2", "--data-dir", str(data), "--run-dir", str(run),
            "--max-steps", "2", "--batch-size", "16", "--num-train", "32", "--threads", "1",
            "--set", "data.num_val=16", "--set", "data.num_test=32"])
    per_length, worst = recipe_report(load_run(run), max_batches=2)[0]
    assert per_length.title == "Error per sequence length" and "test split" in per_length.body
    lengths = [int(n) for n in re.findall(r'<tr><td class="num">(\d+)</td>', per_length.body)]
    assert lengths == [1, 2, 3, 4]  # test sequences go to 2N = 4
    assert per_length.body.count("<img") == 1
    # the worst sequences: the digits in a row, the target sum and the prediction
    assert worst.title == "Worst sequences"
    found = re.findall(r'<figure class="sequence"><img class="px" width="(\d+)" alt="test sequence \d+" src="data:'
                       r'image/png;base64,[^"]+"><figcaption>\d+: target <b>(\d+)</b>, predicted <b>([\d.]+)</b> '
                       r'\(length (\d), error ([\d.]+)\)', worst.body)
    assert len(found) == 6
    errors = [float(e) for *_, e in found]
    assert errors == sorted(errors, reverse=True)  # the largest error first
    for width, target, predicted, length, error in found:
        assert float(error) == pytest.approx(abs(float(predicted) - int(target)), abs=0.011)
        assert int(width) == (int(length) * 14 - 2) * 4  # 12-pixel digits, 2-pixel gaps, enlarged 4x


def test_lines_sections_show_worst_lines_and_ctc_alignments(tmp_path):
    from convrnn.infer.run import load_run
    from convrnn.viz.report import recipe_report
    run = tmp_path / "lines"
    _train(["lines", "--synthetic", "digits", "--mnist-dir", "sklearn", "--num-train", "32", "--height", "16",
            "--max-digits", "3", "--max-steps", "2", "--batch-size", "16", "--run-dir", str(run),
            "--set", "data.num_val=12", "--set", "data.num_test=4", "--spec", "conv:4,3x3 pool:2x2 cols lstm:8,bi ctc"])
    worst, ctc = recipe_report(load_run(run), max_batches=1)[0]
    assert worst.title == "Worst-read lines" and ctc.title == "CTC alignments"
    # a thumbnail of each line above its reference and prediction
    rows = re.findall(r'<figure class="line"><img class="px" width="(\d+)" alt="line (val[^"]*)" src="data:image/png;'
                      r'base64,([^"]+)"><figcaption><span class="id">(val[^<]*)</span> CER <span class="cer">([\d.]+)'
                      r'</span><br>reference <code class="ref">([^<]*)</code><br>prediction <code class="hyp">', worst.body)
    assert 1 <= len(rows) <= 8 and worst.body.count("<img") == len(rows)
    assert all(alt == name for _, alt, _, name, _, _ in rows)
    cers = [float(c) for *_, c, _ in rows]
    assert cers == sorted(cers, reverse=True)  # worst first
    assert all(ref.isdigit() for *_, ref in rows)  # references are the digit strings
    for width, _, data, *_ in rows:  # 16-pixel lines shown 3x (48 px high), drawn at twice that density
        picture = Image.open(io.BytesIO(base64.b64decode(data)))
        assert picture.size == (2 * int(width), 2 * 3 * 16)
    assert ctc.body.count("<img") == min(3, len(rows))


def test_charlm_section_samples_at_three_temperatures(tmp_path):
    from convrnn.infer.run import load_run
    from convrnn.recipes.charlm import SAMPLE_LENGTH, SAMPLE_TEMPERATURES
    from convrnn.viz.report import recipe_report
    text = tmp_path / "corpus.txt"
    text.write_text("to be or not to be, that is the question\n" * 40, encoding="utf-8")
    run = tmp_path / "charlm"
    _train(["charlm", "--data", str(text), "--run-dir", str(run), "--max-steps", "2", "--batch-size", "4",
            "--set", "data.seq_len=16", "--spec", "embed:8 lstm:16 lm"])
    [section] = recipe_report(load_run(run))[0]
    samples = _texts(section.body, "sample")
    assert len(samples) == len(SAMPLE_TEMPERATURES) == 3
    assert all(len(s) == SAMPLE_LENGTH and set(s) <= set(text.read_text()) for s in samples)


def test_metric_text_shows_totals_as_whole_numbers():
    from convrnn.viz.report import metric_text

    assert metric_text("chars", 28591.0, None) == "28,591"  # not 2.859e+04
    assert metric_text("cer", 0.123456, None) == "0.1235"
    assert metric_text("loss", 12345.6, None) == "1.235e+04"


def test_a_resumed_run_hides_the_tensorboard_events_it_logs_again(tmp_path):
    """A run that crashed after its last checkpoint logged steps that the resume logs again: TensorBoard
    shows each step once, like metrics.csv."""
    import time
    from convrnn.train.rundir import RunDir
    first = RunDir(tmp_path / "run")
    for step in range(1, 6):
        first.log_metrics(step, 0, "train", {"loss": 10.0 - step})
    first.close()
    time.sleep(1.1)  # event files are named by the second they are opened in
    again = RunDir(tmp_path / "run")
    again.truncate_metrics(2)  # the checkpoint the resume starts from
    for step in range(3, 5):
        again.log_metrics(step, 0, "train", {"loss": 100.0 + step})
    again.close()
    events = _event_tags(tmp_path / "run").Scalars("train/loss")
    assert [(e.step, e.value) for e in events] == [(1, 9.0), (2, 8.0), (3, 103.0), (4, 104.0)]
