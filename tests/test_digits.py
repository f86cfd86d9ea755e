"""The digits and mnist recipes end to end on tiny synthetic IDX folders: CLI train/eval/predict/plot,
the data split, the heads the data picks, relu with a high learning rate, the download command."""
import json
import math

import pytest
import torch
from PIL import Image

from convrnn.cli import main
from convrnn.recipes import get_recipe
from convrnn.train.config import TrainConfig

from helpers import SIZE, digit_pngs, run_cli, write_digits

TINY = ["--max-steps", "4", "--batch-size", "16", "--num-train", "64", "--threads", "1",
        "--set", "data.num_val=16", "--set", "data.num_test=32"]


@pytest.fixture(scope="module")
def mnist_dir(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="module")
def digits_run(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "digits-sum"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "digits", "--op", "sum", "--max-len", "3", "--data-dir", str(mnist_dir),
              "--preset", "caine2016", "--run-dir", str(run), *TINY])
    assert exc.value.code == 0
    return run


@pytest.fixture(scope="module")
def mnist_run(mnist_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "mnist"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "mnist", "--data-dir", str(mnist_dir), "--run-dir", str(run),
              "--max-steps", "3", "--batch-size", "16", "--threads", "1"])
    assert exc.value.code == 0
    return run


def test_train_digits_writes_a_run_with_the_seed_model(digits_run):
    cfg = json.loads((digits_run / "config.json").read_text())
    assert cfg["recipe"] == "digits" and cfg["data"]["op"] == "sum" and cfg["data"]["max_len"] == 3
    ckpt = torch.load(digits_run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["spec"] == "conv:8,4x4,tanh,valid conv:16,3x3,tanh,valid flatten gru:200 gru:100 reg:last"
    assert ckpt["input_shape"] == [None, 1, SIZE, SIZE] and ckpt["num_outputs"] == 1


def test_eval_test_split_breaks_down_lengths_up_to_2n(digits_run, capsys):
    code, out, err = run_cli(capsys, "eval", str(digits_run), "--split", "test")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith(f"checkpoint: {digits_run / 'checkpoints' / 'best.pt'} (step ") and lines[1] == "split: test"
    table = lines.index(next(line for line in lines if line.startswith("per length:")))
    metrics = dict(line.split(": ") for line in lines[2:table])
    assert {"mse", "mae", "exact"} <= metrics.keys() and all(math.isfinite(float(v)) for v in metrics.values())
    assert lines[table].split()[2:] == ["length", "mse", "mae", "exact"]
    rows = [line.split() for line in lines[table + 1:]]
    assert [int(r[0]) for r in rows] == [1, 2, 3, 4, 5, 6]  # up to 2N for N = 3
    assert all(len(r) == 4 and all(math.isfinite(float(v)) for v in r) for r in rows)


def test_predict_a_sequence_of_images(digits_run, capsys, tmp_path):
    code, out, err = run_cli(capsys, "predict", str(digits_run), *digit_pngs(tmp_path, [3, 5, 1]))
    assert code == 0, err
    op, value, raw = out.strip().split("\t")
    assert op == "sum" and int(value) == round(float(raw.removeprefix("raw=")))


def test_running_sum_predicts_a_value_per_image(mnist_dir, tmp_path, capsys):
    run = tmp_path / "rs"
    code, out, err = run_cli(capsys, "-q", "train", "digits", "--op", "running-sum", "--max-len", "2",
                             "--data-dir", str(mnist_dir), "--run-dir", str(run), *TINY)
    assert code == 0, err
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["spec"].endswith("gru:64 reg:seq")
    images = digit_pngs(tmp_path, [2, 7, 4])
    code, out, err = run_cli(capsys, "predict", str(run), *images)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == images
    assert all(line.split("\t")[1].lstrip("-").isdigit() for line in lines)


def train_sum_run(capsys, mnist_dir, run, *head) -> dict:
    """A tiny `convrnn train digits` run of sums (``head``: extra CLI options); its last checkpoint."""
    code, out, err = run_cli(capsys, "-q", "train", "digits", *head, "--max-len", "3",
                             "--data-dir", str(mnist_dir), "--run-dir", str(run), *TINY)
    assert code == 0, err
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)


def test_sum_with_the_default_preset_gets_the_dist_head(mnist_dir, tmp_path, capsys):
    from convrnn.infer.run import load_run
    from convrnn.tasks.values import SumOfValuesTask
    ckpt = train_sum_run(capsys, mnist_dir, tmp_path / "sum")
    assert ckpt["spec"].endswith("gru:64 reg:seq") and ckpt["num_outputs"] == 10
    assert isinstance(load_run(tmp_path / "sum").task, SumOfValuesTask)  # the task follows from the model


def test_sum_with_a_regression_head_sums_per_digit_values(mnist_dir, tmp_path, capsys):
    ckpt = train_sum_run(capsys, mnist_dir, tmp_path / "sum", "--preset", "digits:head=reg")
    assert ckpt["spec"].endswith("gru:64 reg:sum") and ckpt["meta"]["target_mean"] == 0.0  # scaled, not shifted


def test_dist_head_trains_on_sums_and_predicts_a_total(mnist_dir, tmp_path, capsys):
    run = tmp_path / "dist"
    ckpt = train_sum_run(capsys, mnist_dir, run, "--preset", "digits:head=dist")
    assert ckpt["spec"].endswith("gru:64 reg:seq") and ckpt["num_outputs"] == 10
    code, out, err = run_cli(capsys, "predict", str(run), *digit_pngs(tmp_path, [3, 4]))
    assert code == 0, err
    op, value, raw = out.strip().split("\t")
    assert op == "sum" and 0 <= int(value) <= 18 and raw.startswith("raw=")
    code, out, err = run_cli(capsys, "train", "digits", "--preset", "digits:head=dist", "--op", "product",
                             "--data-dir", str(mnist_dir), "--run-dir", str(tmp_path / "bad"), *TINY)
    assert code == 2 and "head=dist models a sum" in err and not (tmp_path / "bad").exists()
    assert "preparing" not in err  # refused before any data is made


def test_product_picks_a_classification_head_over_the_values(mnist_dir, tmp_path, capsys):
    run = tmp_path / "prod"
    code, out, err = run_cli(capsys, "-q", "train", "digits", "--op", "product", "--max-len", "2",
                             "--preset", "digits:activation=tanh", "--data-dir", str(mnist_dir), "--run-dir", str(run),
                             *TINY)
    assert code == 0, err
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["num_outputs"] == 82 and ckpt["spec"].endswith("cls:last") and "conv:16,3x3,tanh" in ckpt["spec"]
    code, out, err = run_cli(capsys, "predict", str(run), *digit_pngs(tmp_path, [9, 9]))
    assert code == 0, err
    op, value, p = out.strip().split("\t")
    assert op == "product" and 0 <= int(value) <= 81 and p.startswith("p=")


def test_train_and_eval_digits_come_from_their_own_splits(mnist_dir):
    recipe = get_recipe("digits")
    # no augmentation: the tag pixel at (0, 0) must stay where it is (augmentation: test_sequences.py)
    cfg = recipe.data_config(data_dir=str(mnist_dir), max_len=3, num_train=200, num_val=50, num_test=120, shift=0,
                             rotate=0.0, zoom=0.0)
    bundle = recipe.make_data(cfg, TrainConfig(batch_size=32))
    for source, tag in ((bundle.train, 11), (bundle.val, 22), (bundle.test, 22)):
        lengths = set()
        for batch in source.batches(0):
            corner = batch["x"][:, :, 0, 0, 0][batch["mask"]]  # (B, T) valid steps -> (steps,)
            assert torch.allclose(corner, torch.tensor(tag / 255))
            assert torch.all(batch["x"][~batch["mask"]] == 0)  # padding is blank
            lengths |= set(batch["lengths"].tolist())
        assert lengths == (set(range(1, 7)) if source is bundle.test else {1, 2, 3})
    assert bundle.meta["per_step"] is False and bundle.num_outputs == 28  # the possible sums 0..27 of 1..3 digits


def test_sklearn_fallback_runs_on_8x8_digits(tmp_path, caplog, monkeypatch):
    import convrnn.data.mnist
    monkeypatch.setattr(convrnn.data.mnist, "DEFAULT_DIR", tmp_path)  # no MNIST where it is looked for by default
    monkeypatch.delenv("CONVRNN_MNIST_DIR", raising=False)
    recipe = get_recipe("digits")
    bundle = recipe.make_data(recipe.data_config(data_dir="", num_train=20, num_val=10, num_test=10),
                              TrainConfig(batch_size=8))
    assert bundle.input_shape == (None, 1, 8, 8) and "scikit-learn" in bundle.meta["source"]
    assert "scikit-learn" in caplog.text
    batch = next(iter(bundle.train.batches(0)))
    assert batch["x"].shape[-2:] == (8, 8) and float(batch["x"].max()) <= 1.0


@pytest.mark.parametrize("optimizer, lr, clip, must_stop", [
    ("rmsprop", "5", "1.0", False),   # the original RMSprop at a silly rate, clipped: trains or stops clearly
    ("sgd", "1e20", "0", True),       # unclipped and absurd: the weights overflow, the guard must stop it
])
def test_relu_caine2016_at_a_high_rate_trains_finitely_or_stops_clearly(mnist_dir, tmp_path, capsys, optimizer, lr,
                                                                        clip, must_stop):
    """caine2016 with relu once stuck at an infinite loss: now it either trains (clipping) or stops with one line."""
    outcomes = []
    for attempt in range(2):
        code, out, err = run_cli(capsys, "-q", "train", "digits", "--preset", "caine2016:activation=relu",
                                 "--lr", lr, "--set", f"train.clip_grad_norm={clip}", "--set",
                                 f"train.optimizer={optimizer}", "--data-dir", str(mnist_dir),
                                 "--run-dir", str(tmp_path / f"relu{attempt}"), *TINY)
        if code == 0:
            assert not must_stop
            final = next(line for line in out.splitlines() if line.startswith("final:")).split()
            assert final[1] == "loss"
            loss = float(final[2])
            assert math.isfinite(loss)
            outcomes.append(("trained", round(loss, 4)))
        else:
            error = [line for line in err.strip().splitlines() if line.startswith("error:")]
            assert code == 2 and len(error) == 1 and err.strip().endswith(error[0]), err
            assert "training stopped:" in error[0] and "lower learning rate" in error[0]
            outcomes.append(("stopped", error[0].split("at step")[1].split()[0]))
    assert outcomes[0] == outcomes[1]  # deterministic


def test_mnist_predict_and_filters_side_by_side(mnist_run, digits_run, capsys, tmp_path):
    code, out, err = run_cli(capsys, "predict", str(mnist_run), *digit_pngs(tmp_path, [4]))
    assert code == 0, err
    path, digit, p = out.strip().split("\t")
    assert digit in "0123456789" and 0 < float(p) <= 1
    png = tmp_path / "filters.png"
    code, out, err = run_cli(capsys, "plot", "filters", str(mnist_run), str(digits_run), "--out", str(png))
    assert code == 0, err
    assert "8 + 8 kernels" in out and Image.open(png).size[0] > 400
    code, out, err = run_cli(capsys, "plot", "curves", str(mnist_run), str(digits_run), "--out", str(tmp_path / "c.png"))
    assert code == 0, err and (tmp_path / "c.png").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--op", "divide"], "data.op: expected one of sum, product, running-sum, got 'divide'"),
    (["--preset", "digits:head=softmax"], "head: expected auto, reg, cls or dist, got 'softmax'"),
    (["--preset", "digits:activation=swish"], "'swish'"),
    (["--set", "data.rotate=60"], "data.rotate: expected 0..45 degrees, got 60"),
    (["--set", "data.zoom=0.5"], "data.zoom: expected 0 <= zoom < 0.5, got 0.5"),
    (["--set", "data.elastic=6"], "data.elastic: expected 0..5 pixels, got 6"),
    (["--set", "data.shift=-1"], "data.shift: expected 0 or more pixels, got -1"),
    # test sequences of 20 digits: a product of 20 nines is past a 64-bit integer
    (["--op", "product", "--max-len", "10", "--preset", "digits:head=reg"],
     "data.max_len: expected at most 9 for products (test sequences have up to 2N digits"),
])
def test_bad_options_are_one_line_errors(mnist_dir, tmp_path, capsys, argv, message):
    code, out, err = run_cli(capsys, "train", "digits", "--data-dir", str(mnist_dir), "--run-dir",
                             str(tmp_path / "bad"), *argv, *TINY)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


def test_download_command_shows_progress_reports_a_mismatch_and_leaves_no_file(tmp_path, capsys, monkeypatch):
    import http.server
    import threading
    from test_download import FixtureHandler

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FixtureHandler)
    httpd.files = {"train-images-idx3-ubyte.gz": b"not the real file"}
    httpd.modes, httpd.requests, httpd.already_cut = {}, [], set()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/mnist/"
        code, out, err = run_cli(capsys, "data", "download", "mnist", "--to", str(tmp_path / "m"),
                                 "--base-url", url, "--timeout", "5")
    finally:
        httpd.shutdown()
        httpd.server_close()
    *progress, last = err.strip().splitlines()
    assert code == 2 and last.startswith("error: ") and "train-images-idx3-ubyte.gz" in last
    assert progress and all(line.startswith("downloading train-images-idx3-ubyte.gz: ") for line in progress)
    assert not (tmp_path / "m" / "train-images-idx3-ubyte.gz").exists()
