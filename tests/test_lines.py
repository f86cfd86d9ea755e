"""The lines recipe: readers with bad files, batching, synthetic splits, overfitting one batch, CLI smoke."""
# B batch, C channels, H height, W width, T frames
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from convrnn.cli import main
from convrnn.data.lines import (LineSet, build_alphabet, line_batches, read_lines, scale_to_height, split_lines,
                                unseen_characters, warp_lines, write_line_folder)
from convrnn.data.synthetic_lines import digit_lines, heldout_text, text_lines
from convrnn.errors import DataError
from convrnn.spec import build_model, format_spec, parse
from convrnn.layers.base import ModelOutput
from convrnn.tasks.ctc import CTCTask

from helpers import run_cli


def _line_image(path, width=40, height=20, dark_on_light=True, seed=0):
    rng = np.random.default_rng(seed)
    ink = np.zeros((height, width), dtype=np.uint8)
    ink[5:15, 3:width - 3] = rng.integers(100, 256, size=(10, width - 6))
    Image.fromarray(255 - ink if dark_on_light else ink).save(path)


@pytest.fixture()
def messy_folder(tmp_path):
    """Two good lines and one of each kind of bad sample."""
    d = tmp_path / "lines"
    d.mkdir()
    for name, text in (("good1", "ab c"), ("good2", "ba")):
        _line_image(d / f"{name}.png", seed=len(name))
        (d / f"{name}.gt.txt").write_text(text + "\n", encoding="utf-8")
    (d / "garbage.png").write_bytes(b"this is not a png")
    (d / "garbage.gt.txt").write_text("x", encoding="utf-8")
    Image.fromarray(np.full((20, 30), 255, np.uint8)).save(d / "blank.png")
    (d / "blank.gt.txt").write_text("y", encoding="utf-8")
    _line_image(d / "nogt.png")
    _line_image(d / "emptygt.png")
    (d / "emptygt.gt.txt").write_text("  \n", encoding="utf-8")
    (d / "orphan.gt.txt").write_text("z", encoding="utf-8")
    _line_image(d / "latin1.png")
    (d / "latin1.gt.txt").write_bytes("caf\xe9".encode("latin-1"))
    return d


def test_folder_reader_skips_and_names_bad_files(messy_folder, caplog):
    with caplog.at_level(logging.WARNING):
        lines = read_lines(str(messy_folder), height=16)
    assert sorted(lines.names) == ["good1", "good2"] and len(lines) == 2
    assert sorted(lines.skipped) == ["blank", "emptygt", "garbage", "latin1", "nogt", "orphan"]
    assert "skipped 6 of 8 lines" in caplog.text and "garbage.png" in caplog.text
    assert all(im.shape[0] == 16 and im.dtype == np.uint8 for im in lines.images)
    assert lines.texts[lines.names.index("good1")] == "ab c"
    with pytest.raises(DataError, match="blank.png: the image is blank"):
        read_lines(str(messy_folder), height=16, strict=True)


def test_lines_are_inverted_to_bright_ink_and_keep_aspect_ratio(tmp_path):
    _line_image(tmp_path / "a.png", width=80, height=20)
    (tmp_path / "a.gt.txt").write_text("a", encoding="utf-8")
    lines = read_lines(str(tmp_path), height=10)
    im = lines.images[0]
    assert im.shape == (10, 40)
    assert im[0, 0] < 30 and im[5, 20] > 50  # background dark, ink bright
    assert scale_to_height(np.zeros((4, 3), np.uint8), 8).shape == (8, 6)


def test_manifest_paths_relative_escaping_and_malformed(tmp_path):
    root = tmp_path / "set"
    (root / "img").mkdir(parents=True)
    _line_image(root / "img" / "a.png")
    _line_image(tmp_path / "outside.png")
    manifest = root / "train.tsv"
    manifest.write_text("img/a.png\thello  world\nimg/a.png\t\n\n", encoding="utf-8")
    lines = read_lines(str(manifest), height=16)
    assert lines.texts == ["hello world"] and len(lines.skipped) == 1
    manifest.write_text("img/a.png\thi\n../outside.png\tout\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.tsv:2: path '../outside.png' leaves the dataset folder"):
        read_lines(str(manifest), height=16)
    assert read_lines(str(manifest), height=16, allow_outside_root=True).texts == ["hi", "out"]
    manifest.write_text("img/a.png hi\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"train.tsv:1: expected 'path<TAB>text'"):
        read_lines(str(manifest), height=16)
    with pytest.raises(DataError, match="no such folder or manifest"):
        read_lines(str(tmp_path / "missing"), height=16)



def test_byte_order_marks_are_not_text(tmp_path):
    """Files saved by Windows editors start with a UTF-8 byte-order mark: it is not a character of the
    transcription (nor of the first path of a manifest); UTF-16 is refused with how to convert it."""
    root = tmp_path / "set"
    root.mkdir()
    _line_image(root / "a.png")
    (root / "a.gt.txt").write_bytes("\ufeffhello".encode("utf-8"))
    assert read_lines(str(root), height=16).texts == ["hello"]
    manifest = tmp_path / "train.tsv"
    manifest.write_bytes("\ufeffset/a.png\thi\n".encode("utf-8"))
    assert read_lines(str(manifest), height=16).texts == ["hi"]
    (root / "a.gt.txt").write_bytes("hello".encode("utf-16"))
    with pytest.raises(DataError, match=r"expected UTF-8 text, got UTF-16LE text .* in .*a\.gt\.txt"):
        read_lines(str(root), height=16, strict=True)


def test_all_bad_is_an_error_not_an_empty_dataset(tmp_path):
    (tmp_path / "x.png").write_bytes(b"nope")
    (tmp_path / "x.gt.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="its one line is bad, none left to use"):
        read_lines(str(tmp_path), height=16)


def test_batches_group_similar_widths_pad_and_carry_lengths():
    rng = np.random.default_rng(0)
    widths = rng.integers(5, 200, size=64)
    lines = LineSet([np.full((8, w), 200, np.uint8) for w in widths], [str(i) for i in range(64)],
                    [f"n{i}" for i in range(64)])
    src = line_batches(lines, 8, seed=3)
    batches = list(src.batches(0))
    assert sorted(i for b in batches for i in b["texts"]) == sorted(lines.texts)
    spreads = []
    for b in batches:
        x, lengths = b["x"], b["lengths"]
        assert x.shape[:3] == (len(lengths), 1, 8) and x.shape[3] % 32 == 0
        assert int(lengths.max()) <= x.shape[3] < int(lengths.max()) + 32
        for k, n in enumerate(lengths.tolist()):
            assert torch.all(x[k, :, :, :n] > 0.7) and torch.all(x[k, :, :, n:] == 0)
        spreads.append(int(lengths.max() - lengths.min()))
    assert np.mean(spreads) < 0.5 * (widths.max() - widths.min())  # sorted within chunks, not random
    assert [b["ids"] for b in src.batches(0, start=3)] == [b["ids"] for b in batches[3:]]


def test_warped_batches_are_fresh_per_batch_reproducible_and_keep_shapes():
    rng = np.random.default_rng(0)
    images = [np.zeros((16, w), np.uint8) for w in rng.integers(40, 90, size=16)]
    for im in images:
        im[4:12, 8:-8:6] = 255  # vertical strokes a slant leans and a bend moves
    lines = LineSet(images, [str(i) for i in range(16)], [f"n{i}" for i in range(16)])
    plain = list(line_batches(lines, 4, seed=1).batches(0))
    warped = list(line_batches(lines, 4, seed=1, slant=0.3, bend=1.5).batches(0))
    again = list(line_batches(lines, 4, seed=1, slant=0.3, bend=1.5).batches(0))
    for p, w, a in zip(plain, warped, again):
        assert p["ids"] == w["ids"] and torch.equal(p["lengths"], w["lengths"]) and p["x"].shape == w["x"].shape
        assert torch.equal(w["x"], a["x"])  # the batch's ids and the seed decide the warp: resuming replays it
        assert not torch.allclose(w["x"], p["x"], atol=0.05)
        assert float(w["x"].min()) >= 0 and float(w["x"].max()) <= 1
        assert abs(float(w["x"].sum()) / float(p["x"].sum()) - 1) < 0.15  # ink moves, little is lost
    x = plain[0]["x"]
    assert torch.equal(warp_lines(x, np.random.default_rng(0)), x)  # both off: untouched
    stroke = torch.zeros(4, 1, 16, 32)
    stroke[:, :, 2:14, 8] = 1.0  # one vertical stroke at column 8
    leaned = warp_lines(stroke, np.random.default_rng(0), slant=0.3)
    shear = np.random.default_rng(0).uniform(-0.3, 0.3, size=4)  # the draws warp_lines makes
    top, bottom = leaned[:, 0, 4].argmax(-1).numpy(), leaned[:, 0, 11].argmax(-1).numpy()
    # output column c samples input column c + shear * (row - 8): the stroke at column 8 lands at
    # 8 + 3.5 shear in row 4 and 8 - 3.5 shear in row 11
    assert np.all(np.abs((top - bottom) - 7 * shear) <= 1)


def test_lines_read_from_files_train_in_smaller_batches_unless_told(tmp_path):
    from convrnn.recipes.base import get_recipe
    from convrnn.recipes.lines import FILE_BATCH_SIZE

    recipe = get_recipe("lines")
    assert recipe.config({"data.data": "lines/"}).train.batch_size == FILE_BATCH_SIZE == 16
    assert recipe.config({"data.synthetic": "digits"}).train.batch_size == 32
    assert recipe.config({"data.data": "lines/", "train.batch_size": "32"}).train.batch_size == 32
    saved = tmp_path / "config.json"
    recipe.config({"data.data": "lines/", "train.batch_size": "8"}).save(saved)
    assert recipe.config(config_file=str(saved)).train.batch_size == 8  # a re-run keeps its own


def test_split_by_text_keeps_validation_text_out_of_training():
    texts = ["a", "b", "c", "a", "d", "b", "e", "f", "g", "h"]
    lines = LineSet([np.ones((4, 4), np.uint8)] * 10, texts, [str(i) for i in range(10)])
    train, val = split_lines(lines, 0.3, seed=0)
    assert len(train) + len(val) == 10 and not set(train.texts) & set(val.texts)


def test_task_encodes_texts_and_counts_unseen_characters():
    task = CTCTask(build_alphabet(["ab", "ba c"]))
    assert task.alphabet == [" ", "a", "b", "c"]
    batch = task.with_targets({"texts": ["ab", "xa"]})
    assert batch["targets"].tolist() == [2, 3, 2] and batch["target_lengths"].tolist() == [2, 1]
    assert unseen_characters(["xa", "yx"], task.alphabet) == {"x": 2, "y": 1}
    logits = torch.full((2, 4, 5), -10.0)
    for t, k in enumerate([2, 0, 3, 0]):
        logits[0, t, k] = 10.0
    for t, k in enumerate([2, 0, 0, 0]):
        logits[1, t, k] = 10.0
    metrics = task.new_metrics()
    metrics.update(ModelOutput(logits, torch.tensor([4, 4])), {"texts": ["ab", "xa"]})
    result = metrics.compute()
    assert result["unseen_chars"] == 1.0 and result["cer"] == pytest.approx(1 / 4)  # 'x' is the one error


def test_mdlstm_ops_parse_round_trip_and_map_lengths():
    spec = "tile:2x2 mdlstm:3,dirs=2,dropout=0.5 conv:4,4x2,tanh,s=4x2,valid lstm2d:2,sum collapse:mean ctc:5"
    assert parse(format_spec(parse(spec))) == parse(spec)
    model = build_model(spec, (1, 16, None), 5)
    out = model.run(torch.rand(2, 1, 16, 30), torch.tensor([30, 17]))
    assert out.y.shape == (2, 7, 5) and out.lengths.tolist() == [7, 4]  # 30 -> 15 -> 7; 17 -> 9 -> 4


# ------------------------------------------------------------------------------------ synthetic

def test_synthetic_digits_heldout_strings_never_in_training(tmp_path):
    kw = dict(max_digits=4, height=16, mnist_dir="sklearn")  # scikit-learn's 8x8 digits
    train = digit_lines(300, split="train", **kw)
    val = digit_lines(60, split="val", **kw)
    assert not set(train.texts) & set(val.texts)
    assert all(not heldout_text(t) for t in train.texts) and all(heldout_text(t) for t in val.texts)
    assert all(1 <= len(t) <= 4 and t.isdigit() for t in train.texts)
    assert all(im.shape[0] == 16 for im in train.images)
    again = digit_lines(300, split="train", **kw)
    assert again.texts == train.texts and all(np.array_equal(a, b) for a, b in zip(again.images, train.images))


def test_distorted_training_digits_keep_texts_and_are_reproducible(tmp_path):
    kw = dict(max_digits=4, height=16, mnist_dir="sklearn")
    plain = digit_lines(40, split="train", **kw)
    moved = digit_lines(40, split="train", rotate=12.0, zoom=0.1, elastic=1.5, **kw)
    assert moved.texts == plain.texts  # the same strings, drawn before any distortion
    assert any(a.shape != b.shape or not np.array_equal(a, b) for a, b in zip(moved.images, plain.images))
    again = digit_lines(40, split="train", rotate=12.0, zoom=0.1, elastic=1.5, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(again.images, moved.images))
    assert all(im.shape[0] == 16 and im.max() > 100 for im in moved.images)


def test_synthetic_text_heldout_never_in_training(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(f"line {i} of the quick brown fox {i * 7}" for i in range(60)), encoding="utf-8")
    train = text_lines(150, split="train", height=16, text=str(corpus), max_chars=12)
    val = text_lines(30, split="val", height=16, text=str(corpus), max_chars=12)
    assert not set(train.texts) & set(val.texts)
    assert all(0 < len(t) <= 12 for t in train.texts)
    assert all(im.shape[0] == 16 and im.shape[1] > 4 and im.max() > 100 for im in val.images)


# ------------------------------------------------------------------------------------ training

def test_tiny_model_overfits_one_batch_to_zero_cer(tmp_path):
    torch.manual_seed(0)
    lines = digit_lines(4, split="train", max_digits=3, height=16, mnist_dir="sklearn", seed=1)
    task = CTCTask(build_alphabet(lines.texts))
    batch = next(iter(line_batches(lines, 4, shuffle=False).batches(0)))
    model = build_model("conv:8,3x3,s=2x1 pool:2x2 cols lstm:32,bi ctc", (1, 16, None), task.num_outputs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(300):
        loss = task.loss(model.run(batch["x"], batch["lengths"]), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 10 == 9:
            model.eval()
            with torch.no_grad():
                metrics = task.new_metrics()
                metrics.update(model.run(batch["x"], batch["lengths"]), batch)
            model.train()
            if metrics.compute()["cer"] == 0.0:
                break
    assert metrics.compute()["cer"] == 0.0, (step, metrics.compute())



@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    base = tmp_path_factory.mktemp("lines")
    run = base / "run"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "lines", "--synthetic", "digits", "--mnist-dir", "sklearn", "--num-train", "48",
              "--height", "16", "--max-digits", "3", "--max-steps", "3", "--batch-size", "16", "--run-dir", str(run),
              "--set", "data.num_val=16", "--set", "data.num_test=8",
              "--spec", "conv:8,3x3 pool:2x2 cols lstm:8,bi ctc"])
    assert exc.value.code == 0
    lines = digit_lines(3, split="val", max_digits=3, height=16, mnist_dir="sklearn")
    folder = write_line_folder(lines, base / "folder")
    return run, folder


def test_cli_train_predict_eval(digits_run, capsys, tmp_path):
    run, folder = digits_run
    assert (run / "checkpoints" / "best.pt").is_file()
    images = sorted(str(p) for p in folder.glob("*.png"))
    code, out, err = run_cli(capsys, "predict", str(run), *images)
    assert code == 0, err
    rows = [line.split("\t") for line in out.rstrip("\n").split("\n")]
    assert [r[0] for r in rows] == images and all(len(r) == 2 and set(r[1]) <= set("0123456789") for r in rows)
    words = tmp_path / "words.txt"
    words.write_text("12\n345\n", encoding="utf-8")
    code, out, err = run_cli(capsys, "predict", str(run), images[0], "--beam", "3", "--lexicon", str(words))
    assert code == 0, err
    assert out.rstrip("\n").split("\t")[1] in ("12", "345", "1", "3", "34", "")
    code, out, err = run_cli(capsys, "eval", str(run), "--split", "test")
    assert code == 0, err
    assert "cer:" in out and "wer:" in out and "unseen_chars: 0" in out
    code, out, err = run_cli(capsys, "eval", str(run), "--set", f"data.synthetic=", "--set", f"data.data={folder}",
                             "--set", f"data.val={folder}")
    assert code == 0, err
    assert "cer:" in out and "unseen_chars: 0" in out
    # a run trained on drawn lines scores the lines it is given, not drawn ones in their place
    code, out, err = run_cli(capsys, "eval", str(run), "--set", f"data.test={folder}")
    assert code == 0, err
    assert "split: test" in out and "skipped_too_long: 0/3\n" in out, out  # the folder's 3 lines, not 8 drawn
    code, out, err = run_cli(capsys, "eval", str(run), "--set", f"data.test={tmp_path / 'moved'}")
    assert code == 2 and "moved" in err and len(err.strip().splitlines()) == 1


def test_cli_train_from_folder_and_bad_inputs(digits_run, capsys, tmp_path):
    run, folder = digits_run
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--data", str(folder), "--val", str(folder),
                             "--height", "16", "--max-steps", "2", "--run-dir", str(tmp_path / "r2"),
                             "--spec", "conv:4,3x3 pool:2x2 cols lstm:4 ctc")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "lines", "--run-dir", str(tmp_path / "r3"))
    assert code == 2 and err.count("\n") == 1 and "exactly one of --data" in err
    assert not (tmp_path / "r3").exists()
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    code, out, err = run_cli(capsys, "predict", str(run), str(bad))
    assert code == 2 and "bad.png: not a readable image" in err and err.count("\n") == 1


def test_cli_plot_ctc(digits_run, capsys, tmp_path):
    pytest.importorskip("convrnn.cli.plot")
    run, folder = digits_run
    image = sorted(folder.glob("*.png"))[0]
    code, out, err = run_cli(capsys, "plot", "ctc", str(run), str(image), "--out", str(tmp_path / "a.png"))
    assert code == 0, err
    with Image.open(tmp_path / "a.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200


def test_eval_decodes_by_beam_word_list_and_language_model(digits_run, capsys, tmp_path):
    """eval scores a run with any of the decoders predict has; their CERs are measured, not assumed."""
    import re
    run, folder = digits_run
    words, corpus = tmp_path / "words.txt", tmp_path / "corpus.txt"
    words.write_text("12\n345\n", encoding="utf-8")
    corpus.write_text("123\n4567\n890\n" * 20, encoding="utf-8")
    cers = {}
    for name, options in {"greedy": [], "beam": ["--beam", "4"], "lexicon": ["--beam", "4", "--lexicon", str(words)],
                          "lm": ["--beam", "4", "--lm", str(corpus)]}.items():
        code, out, err = run_cli(capsys, "eval", str(run), "--split", "test", *options)
        assert code == 0, err
        cers[name] = float(re.search(r"^cer: ([0-9.e-]+)$", out, re.M).group(1))
    assert all(0.0 <= v <= 5.0 for v in cers.values())
    code, out, err = run_cli(capsys, "eval", str(run), "--lm", str(tmp_path / "missing.txt"))
    assert code == 2 and f"--lm {tmp_path / 'missing.txt'}: no such file" in err and err.count("\n") == 1, err
    code, out, err = run_cli(capsys, "predict", str(run), str(words), "--lexicon", str(tmp_path))
    assert code == 2 and f"--lexicon {tmp_path}: a folder; give a text file" in err and err.count("\n") == 1, err


def test_decoding_options_on_a_run_that_is_not_a_text_line_run_are_one_line(capsys, tmp_path):
    run = tmp_path / "fonts"
    code, out, err = run_cli(capsys, "-q", "train", "fonts", "--samples-per-font", "20", "--max-steps", "1",
                             "--run-dir", str(run))
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(run), "--beam", "4")
    assert code == 2 and err.strip() == f"error: --beam: for text-line runs only; {run} is a fonts run"


def test_pruned_beam_search_finds_what_the_full_search_finds():
    """A real recogniser is sure of most frames: labels below 1e-4 at a frame change nothing there."""
    from convrnn.tasks.ctc import beam_search
    rng = np.random.default_rng(0)
    for _ in range(20):
        logits = rng.normal(size=(30, 12)) * 6.0  # peaked frames, as a trained model gives
        lp = torch.log_softmax(torch.from_numpy(logits), dim=-1)
        assert beam_search(lp, 6) == beam_search(lp, 6, prune=0.0)


def test_a_validation_cut_from_changed_data_is_refused(tmp_path, capsys):
    """Validation lines cut from --data are chosen by text: added lines move others between training and
    validation, so eval (and a resume) on the changed folder would score lines the model trained on."""
    from convrnn.data.lines import read_lines, split_lines
    folder = write_line_folder(digit_lines(40, split="val", max_digits=3, height=16, mnist_dir="sklearn"),
                               tmp_path / "lines")
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--data", str(folder), "--height", "16",
                             "--max-steps", "2", "--batch-size", "8", "--run-dir", str(run),
                             "--spec", "conv:4,3x3 pool:2x2 cols lstm:4,bi ctc")
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and "cer:" in out, err
    assert "distorted" not in err  # eval reads the training lines to cut the validation out, and distorts none
    before = split_lines(read_lines(str(folder), height=16), 0.1, 0)[1].texts
    more = digit_lines(12, split="train", max_digits=3, height=16, mnist_dir="sklearn")
    write_line_folder(more, tmp_path / "more")
    for k, png in enumerate(sorted((tmp_path / "more").glob("*.png"))):
        png.rename(folder / f"added{k}.png")
        (tmp_path / "more" / f"{png.stem}.gt.txt").rename(folder / f"added{k}.gt.txt")
    after = split_lines(read_lines(str(folder), height=16), 0.1, 0)[1].texts
    assert sorted(before) != sorted(after)  # the cut moved: the case this test is about
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 2 and [line.startswith("error: ") for line in err.strip().splitlines()][-1:] == [True], err
    assert err.count("error: ") == 1 and "the data changed" in err and "--set data.val=PATH" in err and str(folder) in err
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--resume", str(run), "--max-steps", "3")
    assert code == 2 and "val_cut" in err and err.count("error: ") == 1, err
    code, out, err = run_cli(capsys, "eval", str(run), "--set", f"data.val={folder}")  # given, not cut: read
    assert code == 0 and "cer:" in out, err


