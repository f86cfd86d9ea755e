"""Inputs the fonts and digits recipes cannot use well are refused in one line or named in a warning:
an empty validation split, text characters not every font draws, one font file given twice, a digit
sequence longer than a classification head's values, a blank digit image."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from PIL import Image

from convrnn.data import fonts as F
from convrnn.data.mnist import load_sklearn_digits
from convrnn.data.sequences import make_digit_sequences
from convrnn.errors import ConfigError, DataError
from convrnn.fields import check
from convrnn.recipes.base import get_recipe
from convrnn.recipes.digits import check_length, read_digit
from convrnn.tasks.values import RegressTask, ValueClassifyTask
from convrnn.train.config import TrainConfig

from helpers import digit_pngs, run_cli, write_digits

SANS, SERIF = (str(f.path) for f in F.default_fonts()[:2])


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------ fonts: empty validation

@pytest.mark.parametrize("options, message", [
    (["--set", "data.val_fraction=0"], "error: data.val_fraction: expected a fraction in (0, 1), got 0.0"),
    (["--samples-per-font", "1"], "error: data.samples_per_font: expected at least 2 (a crop to train and one "
                                  "to validate per font), got 1"),
    (["--samples-per-font", "4", "--set", "data.val_fraction=0.1"],
     "error: data.val_fraction: expected a share of the 4 samples per font that rounds to 1..3 validation crops "
     "(the rest train), got 0.1"),
])
def test_fonts_refuses_a_split_without_crops(tmp_path, capsys, options, message):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "fonts", "--run-dir", str(run), "--max-steps", "1", "--threads", "1",
                             *options)
    assert code == 2 and one_error_line(err) == message
    assert out == "" and not run.exists()  # refused before any data, checkpoint or "final: loss 0" line


def test_fonts_config_needs_a_crop_of_each_font_in_both_splits():
    check(F.FontsDataConfig(samples_per_font=2, val_fraction=0.5), "data")  # one crop each: enough
    with pytest.raises(ConfigError, match=r"data.val_fraction: .*rounds to 1..9 validation crops"):
        check(F.FontsDataConfig(samples_per_font=10, val_fraction=0.96), "data")  # 10 to validate, none to train


# ------------------------------------------------------------------------ fonts: undrawable text

def fonts_config(tmp_path, text, **kw):
    return F.FontsDataConfig(text=str(text), samples_per_font=4, val_fraction=0.25, seed=1,
                             cache_dir=str(tmp_path / "cache"), **kw)


def test_characters_not_every_font_draws_are_named_with_their_counts(tmp_path, caplog):
    text = tmp_path / "text.txt"
    text.write_text("Grüße aus München {sagte} er\nein Mann_1 | 你好 😀\nThe quick brown fox\nx\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        train, val, meta = F.make_fonts_data(fonts_config(tmp_path, text))
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    (warning,) = warnings
    assert warning.startswith(f"{text}: left out 10 characters that not every font draws")
    # cmr10 draws ü, ß, {, }, _ and | as other signs; no default font draws 你 or 好
    for shown in ("'ü' x2 (cmr10)", "'ß' x1 (cmr10)", "'{' x1 (cmr10)", "'_' x1 (cmr10)", "'|' x1 (cmr10)",
                  "'你' x1 (all fonts)", "'😀' x1 ("):
        assert shown in warning
    assert "dropped 1 line left with fewer than 2 characters" in warning  # "x"
    assert not set(meta["alphabet"]) & set("üß{}_|你好😀")
    assert meta["num_lines"]["train"] + meta["num_lines"]["val"] == 3
    caplog.clear()
    plain = tmp_path / "plain.txt"
    plain.write_text("the quick brown fox\njumps over the lazy dog\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        F.make_fonts_data(fonts_config(tmp_path, plain))
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]  # nothing left out: no warning


def test_one_left_out_character_is_counted_in_the_singular():
    lines, note = F.drawable_lines(["ab 你 cd"], F.default_fonts())  # no default font draws 你
    assert lines == ["ab cd"]
    assert note.startswith("left out 1 character that not every font draws") and "'你' x1 (all fonts)" in note


def test_text_with_nothing_drawable_is_refused_naming_what_was_left_out(tmp_path, capsys):
    text = tmp_path / "cjk.txt"
    text.write_text("你好\n😀😀\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"expected at least 2 text lines the fonts can draw .*got 0 in .*cjk.txt: "
                                        r"left out 4 characters .*'😀' x2"):
        F.make_fonts_data(fonts_config(tmp_path, text))
    code, out, err = run_cli(capsys, "train", "fonts", "--text", str(text), "--run-dir", str(tmp_path / "run"),
                             "--max-steps", "1", "--threads", "1")
    assert code == 2 and "'你' x1 (all fonts)" in one_error_line(err) and not (tmp_path / "run").exists()


# ------------------------------------------------------------------------ fonts: defaults say so

def test_the_bundled_fonts_and_embedded_text_say_that_they_stand_in(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="convrnn"):
        F.make_fonts_data(F.FontsDataConfig(samples_per_font=4, val_fraction=0.25, cache_dir=str(tmp_path / "c")))
    assert "fonts: the 5 faces bundled with matplotlib (no --fonts given)" in caplog.text
    assert "text: the English text embedded in the package (no --text given)" in caplog.text
    caplog.clear()
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox\njumps over the lazy dog\n", encoding="utf-8")
    with caplog.at_level(logging.INFO, logger="convrnn"):
        F.make_fonts_data(fonts_config(tmp_path, text, fonts=[SANS, SERIF]))
    assert "no --fonts given" not in caplog.text and "no --text given" not in caplog.text


def test_text_of_a_right_to_left_script_is_named_as_drawn_without_shaping(tmp_path, caplog):
    text = tmp_path / "hebrew.txt"
    text.write_text("שלום עולם\nמה שלומך היום\nבוקר טוב\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        train, val, meta = F.make_fonts_data(fonts_config(tmp_path, text, fonts=[SANS]))
    assert f"{text}: characters of scripts written right to left or with joined or reordered letters (" in caplog.text
    assert "..., 13 distinct) are drawn without shaping, one glyph after another from left to right" in caplog.text
    assert F.unshaped_chars(["The quick brown fox", "Grüße 你好"]) == []
    assert F.unshaped_chars(["नमस्ते दुनिया"]) == ["ा", "ि"]  # Devanagari vowel signs, the second drawn before its letter


# ------------------------------------------------------------------------ fonts: one file twice

def test_a_font_file_given_twice_is_refused(tmp_path, capsys):
    with pytest.raises(DataError, match=rf"^font file {SANS} is given twice: two classes of one font"):
        F.resolve_fonts([SANS, SERIF, SANS])
    folder = tmp_path / "fonts"
    folder.mkdir()
    os.symlink(SANS, folder / "Sans.ttf")
    with pytest.raises(DataError, match=rf"font file {SANS} is given twice \(also as {folder / 'Sans.ttf'}\)"):
        F.resolve_fonts([str(folder), SANS])
    code, out, err = run_cli(capsys, "train", "fonts", "--fonts", SANS, "--fonts", SANS, "--run-dir",
                             str(tmp_path / "run"), "--max-steps", "1", "--threads", "1")
    assert code == 2 and one_error_line(err).startswith(f"error: font file {SANS} is given twice")
    assert [s.name for s in F.resolve_fonts([SANS, SERIF])] == ["DejaVuSans", "DejaVuSerif"]


def test_training_on_one_font_is_refused_before_drawing(tmp_path, capsys):
    code, out, err = run_cli(capsys, "train", "fonts", "--fonts", SANS, "--run-dir", str(tmp_path / "run"),
                             "--max-steps", "1", "--threads", "1")
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "run").exists()
    assert err == f"error: --fonts {SANS}: 1 font (DejaVuSans); telling fonts apart needs at least 2: give each " \
                  f"with --fonts, or a folder of them\n"


def test_copies_of_one_font_are_named_in_a_warning(tmp_path, caplog):
    copy = tmp_path / "Copy.ttf"
    copy.write_bytes(open(SANS, "rb").read())
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        specs = F.resolve_fonts([SANS, str(copy)])
    assert [s.name for s in specs] == ["DejaVuSans", "Copy"]
    assert f"font files {SANS} and {copy} hold identical bytes" in caplog.text


def test_two_files_of_one_face_are_named_in_a_warning(tmp_path, caplog):
    other = tmp_path / "DejaVuSans-other-version.ttf"
    other.write_bytes(open(SANS, "rb").read() + b"\x00" * 4)  # other bytes, the same face
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        specs = F.resolve_fonts([SANS, str(other), SERIF])
    assert len(specs) == 3
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(f"font files {SANS} and {other} are both the face DejaVu Sans Book: two versions")


# ------------------------------------------------------------------------ fonts: eval by class name

def test_eval_refuses_a_font_whose_class_name_depends_on_the_order_given(tmp_path, caplog):
    """Trained on a/Regular.ttf (class Regular) and b/Regular.ttf (class Regular-2): scoring b/Regular.ttf
    alone names it Regular, the class of the other font, and would score its crops against it."""
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "Regular.ttf").write_bytes(open(SANS, "rb").read())
    (b / "Regular.ttf").write_bytes(open(SERIF, "rb").read())
    meta = {"classes": ["Regular", "Regular-2"], "fonts": [str(a / "Regular.ttf"), str(b / "Regular.ttf")],
            "height": 16, "width": 64}
    recipe = get_recipe("fonts")
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox\njumps over the lazy dog\nPack my box with five dozen\n", encoding="utf-8")

    def score(*fonts):
        return recipe.make_split(fonts_config(tmp_path, text, fonts=[str(f) for f in fonts]), TrainConfig(),
                                 "val", meta)

    with pytest.raises(DataError, match=r"font .*b/Regular.ttf is scored as class Regular, which this model learned "
                                        r"from .*a/Regular.ttf, a file with other bytes; several fonts share the file "
                                        r"name 'Regular'"):
        score(b / "Regular.ttf")
    with pytest.raises(DataError, match="is scored as class Regular"):
        score(b / "Regular.ttf", a / "Regular.ttf")
    assert len(score(a / "Regular.ttf", b / "Regular.ttf").dataset) == 2  # as in training
    # a name that only one file has: another version of a font scores, with a warning
    meta = {"classes": ["Regular"], "fonts": [str(a / "Regular.ttf")], "height": 16, "width": 64}
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        score(b / "Regular.ttf")
    assert "b/Regular.ttf is scored as class Regular, which this model learned from" in caplog.text


def test_eval_on_another_machine_checks_fonts_by_their_recorded_digest(tmp_path, caplog):
    """The training font files are not on the machine that evaluates: the checkpoint's SHA-256 of each
    still tells a font of the same name with other bytes from the one the class was learned from."""
    c = tmp_path / "c"
    c.mkdir()
    (c / "Regular.ttf").write_bytes(open(SERIF, "rb").read())
    (c / "Bold.ttf").write_bytes(open(SANS, "rb").read())
    gone = tmp_path / "elsewhere"  # the training machine's paths
    meta = {"classes": ["Regular", "Bold"], "fonts": [str(gone / "Regular.ttf"), str(gone / "Bold.ttf")],
            "font_digests": [F.file_digest(SANS), F.file_digest(SANS)], "height": 16, "width": 64}
    text = tmp_path / "text.txt"
    text.write_text("The quick brown fox\njumps over the lazy dog\nPack my box with five dozen\n", encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        cfg = fonts_config(tmp_path, text, fonts=[str(c / "Regular.ttf"), str(c / "Bold.ttf")])
        get_recipe("fonts").make_split(cfg, TrainConfig(), "val", meta)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and warnings[0].startswith(f"font {c / 'Regular.ttf'} is scored as class Regular, "
                                                         f"which this model learned from {gone / 'Regular.ttf'}")


# ------------------------------------------------------------------------ digits: predict

TINY = ["--max-steps", "2", "--batch-size", "16", "--num-train", "32", "--threads", "1",
        "--set", "data.num_val=16", "--set", "data.num_test=16"]


@pytest.fixture(scope="module")
def product_run(tmp_path_factory):
    """Products of 1..2 digits with the classification head (values 0..81)."""
    from convrnn.cli import main

    mnist = write_digits(tmp_path_factory.mktemp("mnist"))
    run = tmp_path_factory.mktemp("runs") / "product"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "digits", "--op", "product", "--max-len", "2", "--data-dir", str(mnist),
              "--run-dir", str(run), *TINY])
    assert exc.value.code == 0
    return run


def test_predict_refuses_a_sequence_past_the_classification_heads_values(product_run, tmp_path, capsys):
    code, out, err = run_cli(capsys, "predict", str(product_run), *digit_pngs(tmp_path, [5, 4, 5]))
    assert code == 2 and out == ""
    assert one_error_line(err).startswith("error: 3 images: a sequence of 3 digits can have a product up to 729, "
                                          "but this run's classification head gives 0..81 (sequences of at most 2 "
                                          "digits)")
    code, out, err = run_cli(capsys, "predict", str(product_run), *digit_pngs(tmp_path, [5, 4]))
    assert code == 0 and out.startswith("product\t"), err


@pytest.mark.parametrize("pixel", [0, 255, 128])
def test_predict_refuses_a_blank_digit_image(product_run, tmp_path, capsys, pixel):
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((12, 12), pixel, dtype=np.uint8)).save(blank)
    code, out, err = run_cli(capsys, "predict", str(product_run), digit_pngs(tmp_path, [3])[0], str(blank))
    assert code == 2 and out == ""
    assert one_error_line(err) == (f"error: {blank}: the image is blank (no pixel differs from the background by "
                                   f"10% of the gray range), so there is no digit to read")


def ink_rows_and_columns(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.nonzero(x.max(axis=1) > 0.5)[0], np.nonzero(x.max(axis=0) > 0.5)[0]


def test_a_digit_image_of_another_size_is_fitted_as_mnist_digits_are(tmp_path, caplog):
    one = np.full((60, 12), 255, dtype=np.uint8)     # a tall, thin "1", dark on white paper
    one[5:55, 5:8] = 0
    Image.fromarray(one).save(tmp_path / "one.png")
    x = read_digit(str(tmp_path / "one.png"), (28, 28))
    rows, cols = ink_rows_and_columns(x)
    assert 19 <= len(rows) <= 21 and len(cols) <= 2  # 20 of 28 rows, as thin as it was: not squeezed to 28x28
    assert abs(rows.mean() - 13.5) <= 1 and abs(cols.mean() - 13.5) <= 1
    photo = np.full((200, 300), 180, dtype=np.uint8)  # a small digit near a corner of gray paper
    photo[20:50, 250:270] = 40
    Image.fromarray(photo).save(tmp_path / "photo.png")
    x = read_digit(str(tmp_path / "photo.png"), (28, 28))
    rows, cols = ink_rows_and_columns(x)
    assert len(rows) == 20 and 12 <= len(cols) <= 14 and abs(cols.mean() - 13.5) <= 1
    assert x.min() == 0.0 and x.max() == pytest.approx(1.0)  # the paper is background (0), as in MNIST
    x = read_digit(str(tmp_path / "photo.png"), (8, 8), fill=1.0)  # scikit-learn's digits fill their image
    assert len(ink_rows_and_columns(x)[0]) == 8
    mnist_like = np.zeros((12, 12), dtype=np.uint8)
    mnist_like[2:10, 5:7] = 255
    Image.fromarray(mnist_like).save(tmp_path / "same.png")
    np.testing.assert_array_equal(read_digit(str(tmp_path / "same.png"), (12, 12)), mnist_like / 255.0)  # as it is
    assert "wider than a digit" not in caplog.text
    number = np.zeros((20, 60), dtype=np.uint8)      # "111": three digits in one image
    number[2:18, [10, 30, 50]] = 255
    Image.fromarray(number).save(tmp_path / "number.png")
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        read_digit(str(tmp_path / "number.png"), (28, 28))
    assert f"{tmp_path / 'number.png'}: its ink is 41 pixels wide and 16 high, wider than a digit" in caplog.text


def test_sequence_length_against_each_head(caplog):
    meta = {"op": "sum", "max_len": 2}
    check_length(2, meta, ValueClassifyTask(19))             # 0..18: every sum of two digits
    with pytest.raises(DataError, match=r"3 images: a sequence of 3 digits can have a sum up to 27, but this run's "
                                        r"classification head gives 0..18"):
        check_length(3, meta, ValueClassifyTask(19))
    with pytest.raises(DataError, match="running-sum up to 27"):
        check_length(3, {"op": "running-sum", "max_len": 2}, ValueClassifyTask(19, per_step=True))
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        check_length(2, meta, RegressTask())
        assert not caplog.records
        check_length(5, meta, RegressTask())                 # a regression can give any value: read, with a warning
    assert "5 images: a sequence longer than this run's training sequences (at most 2 digits)" in caplog.text


# ------------------------------------------------------------------------ digits: what the data line says

def test_digits_data_line_counts_the_test_split_and_names_sklearn_plainly(caplog):
    recipe = get_recipe("digits")
    cfg = recipe.data_config(data_dir="sklearn", max_len=3, num_train=40, num_val=10, num_test=30)
    with caplog.at_level(logging.INFO, logger="convrnn"):
        bundle = recipe.make_data(cfg, TrainConfig(batch_size=8))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("digit sequences")]
    assert lines == ["digit sequences (sum) from sklearn-digits (8x8, bundled with scikit-learn): 40 train of "
                     "1..3 digits, 10 val of 1..3 digits, 30 test of 1..6 digits"]
    assert bundle.meta["sizes"] == {"train": 40, "val": 10, "test": 30}
    caplog.clear()
    split = load_sklearn_digits("train")
    with caplog.at_level(logging.INFO, logger="convrnn"):
        make_digit_sequences(split, load_sklearn_digits("test"), num_train=5, num_val=4, num_test=3, max_len=2)
    assert "5 train of 1..2 digits, 4 val of 1..2 digits, 3 test of 1..2 digits" in caplog.text
    assert "fallback" not in split.source


# ------------------------------------------------------------------------ --compile

def test_compile_says_at_the_start_that_it_takes_training_time(caplog):
    from types import SimpleNamespace

    from convrnn.cli.train import CompileNotice

    with caplog.at_level(logging.INFO, logger="convrnn"):
        CompileNotice().on_train_start(SimpleNamespace(cfg=TrainConfig(compile=False)))
        assert not caplog.records
        CompileNotice().on_train_start(SimpleNamespace(cfg=TrainConfig(compile=True)))
    assert caplog.messages == ["compiling the model (torch.compile): the first steps take longer; the time counts "
                               "against --max-time"]
