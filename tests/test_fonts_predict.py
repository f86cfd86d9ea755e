"""fonts predict on line images of any size: ink crop, scaling, windows, and the CLI on a tiny run."""
# N windows, H height, W width
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from convrnn.cli import main
from convrnn.data import fonts as F
from convrnn.errors import DataError

CLASSES = {"DejaVuSans", "DejaVuSerif", "DejaVuSansMono", "STIXGeneral", "cmr10"}


def run_cli(capsys, *argv):
    with pytest.raises(SystemExit) as exc:
        main(list(argv))
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def ink_rect(shape, rows, cols, background=0.0, ink=1.0):
    """Float ``(H, W)`` image of ``background`` with an ``ink`` rectangle at ``rows`` x ``cols`` (slices)."""
    image = np.full(shape, background, dtype=np.float32)
    image[rows, cols] = ink
    return image


def draw_line(path, size, glyph_pt, *, dark_on_light=True, text="Quickly judge the gray boxes"):
    height, width = size
    face = ImageFont.truetype(F.default_fonts()[0].path, glyph_pt)
    image = Image.new("L", (width, height), 255 if dark_on_light else 0)
    ImageDraw.Draw(image).text((3, height // 2), text, font=face, fill=0 if dark_on_light else 255, anchor="lm")
    image.save(path)
    return str(path)


# ---------------------------------------------------------------------------- preprocessing

def test_stretch_puts_background_at_zero_and_strongest_ink_at_one():
    image = ink_rect((20, 50), slice(5, 9), slice(10, 30), background=0.3, ink=0.8)
    image[6, 12] = 0.55                               # half-way ink stays half-way
    out = F.stretch_ink(image)
    assert out.dtype == np.float32 and float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert out[0, 0] == 0.0 and out[5, 10] == 1.0 and out[6, 12] == pytest.approx(0.5)
    assert F.stretch_ink(np.full((20, 50), 0.7, dtype=np.float32)) is None
    assert F.stretch_ink(ink_rect((20, 50), 3, 4, background=0.0, ink=0.05)) is None  # too faint


def test_normalise_crops_to_the_ink_and_scales_it_to_height_minus_two():
    # ink 10 rows high and 100 wide in a 40x200 image: scaled by 14/10 with one pixel of margin around
    line = F.normalise_line(ink_rect((40, 200), slice(10, 20), slice(30, 130)), 16)
    assert line.shape == (16, 140 + 2) and line.dtype == np.float32
    assert line[1:15, 1:141].min() > 0.99                                 # the ink fills the inside
    assert line[[0, 15]].max() < 0.01 and line[:, [0, 141]].max() < 0.01  # the margin is background


def test_normalise_scales_up_small_ink_and_keeps_the_aspect_ratio():
    line = F.normalise_line(ink_rect((16, 64), slice(5, 12), slice(2, 23)), 16)
    assert line.shape == (16, 42 + 2)
    rows = np.nonzero(line.max(axis=1) > 0.5)[0]
    assert (rows[0], rows[-1]) == (1, 14)


def test_windows_cover_the_line_half_a_window_apart():
    line = np.arange(16 * 100, dtype=np.float32).reshape(16, 100)
    win = F.line_windows(line, 64)
    assert win.shape == (3, 16, 64)                      # starts 0, 32 and 36 (the last ends at 100)
    np.testing.assert_array_equal(win[0], line[:, :64])
    np.testing.assert_array_equal(win[1], line[:, 32:96])
    np.testing.assert_array_equal(win[2], line[:, 36:])
    assert F.line_windows(line[:, :64], 64).shape == (1, 16, 64)
    assert F.line_windows(line, 64, stride=16).shape == (4, 16, 64)   # 0, 16, 32 and 36


def test_a_line_narrower_than_a_window_is_padded_on_the_right():
    line = np.ones((16, 40), dtype=np.float32)
    win = F.line_windows(line, 64)
    assert win.shape == (1, 16, 64)
    assert win[0, :, :40].min() == 1.0 and win[0, :, 40:].max() == 0.0


def test_dark_on_light_and_light_on_dark_lines_read_the_same(tmp_path):
    dark = F.read_line_windows(draw_line(tmp_path / "dark.png", (40, 300), 20), 16, 64)
    light = F.read_line_windows(draw_line(tmp_path / "light.png", (40, 300), 20, dark_on_light=False), 16, 64)
    assert dark.shape[1:] == (16, 64) and len(dark) >= 3 and dark.dtype == np.float32
    np.testing.assert_allclose(dark, light, atol=0.02)
    assert dark[:, [0, 15]].max() < 0.3 and dark[:, 1:15].max() == pytest.approx(1.0, abs=0.05)


def test_blank_and_unreadable_images_are_data_errors_naming_the_file(tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("L", (600, 40), 255).save(blank)
    with pytest.raises(DataError, match=r"blank\.png: the image is blank"):
        F.read_line_windows(str(blank), 16, 64)
    notes = tmp_path / "notes.png"
    notes.write_text("not an image")
    with pytest.raises(DataError, match=r"notes\.png: not a readable image"):
        F.read_line_windows(str(notes), 16, 64)


# --------------------------------------------------------------------------------------- CLI

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "fonts-tiny"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "fonts", "--run-dir", str(run), "--samples-per-font", "40", "--max-steps", "3",
              "--batch-size", "16"])
    assert exc.value.code == 0
    return run


def test_predict_reads_a_wide_line_and_a_small_crop(tiny_run, capsys, tmp_path):
    wide = draw_line(tmp_path / "wide.png", (40, 600), 22)
    crop = draw_line(tmp_path / "crop.png", (16, 64), 11, dark_on_light=False)
    code, out, err = run_cli(capsys, "predict", str(tiny_run), wide, crop)
    assert code == 0, err
    rows = [line.split("\t") for line in out.strip().splitlines()]
    assert [r[0] for r in rows] == [wide, crop]
    for _, name, prob in rows:
        assert name in CLASSES and 1 / len(CLASSES) <= float(prob) <= 1.0


def test_predict_from_python_takes_one_path_as_a_string_and_refuses_none(tiny_run, tmp_path):
    from convrnn.errors import DataError
    from convrnn.infer.run import predict

    line = draw_line(tmp_path / "line.png", (40, 300), 16)
    assert predict(str(tiny_run), line) == predict(str(tiny_run), [line])  # not read letter by letter
    with pytest.raises(DataError, match="no inputs given"):
        predict(str(tiny_run), [])


def test_windows_of_several_images_give_the_same_answer_in_small_model_calls(tiny_run, tmp_path, monkeypatch):
    from convrnn.recipes import fonts as recipe_module
    from convrnn.infer.run import load_run

    loaded = load_run(str(tiny_run))
    recipe = loaded.recipe
    paths = [draw_line(tmp_path / f"{i}.png", (40, 300 + 100 * i), 16 + 2 * i) for i in range(3)]
    whole = recipe.predict(loaded, paths)
    monkeypatch.setattr(recipe_module, "PREDICT_CHUNK", 2)
    assert recipe.predict(loaded, paths) == whole
    assert recipe.predict(loaded, paths[1:2]) == whole[1:2]   # an image's answer is its own


@pytest.mark.parametrize("kind", ["blank", "not an image"])
def test_predict_refuses_a_blank_or_unreadable_file_in_one_line(tiny_run, capsys, tmp_path, kind):
    path = tmp_path / "line.png"
    if kind == "blank":
        Image.new("L", (600, 40), 0).save(path)
    else:
        path.write_bytes(b"GIF89a but nothing more")
    code, out, err = run_cli(capsys, "predict", str(tiny_run), str(path))
    assert code == 2 and out == ""
    errors = [line for line in err.strip().splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0] and "Traceback" not in err, err
