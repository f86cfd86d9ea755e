"""The fonts dataset: default faces, width-filling rendering, split by line, cache, errors, preview."""
# H height, W width
from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from convrnn.data import fonts as F
from convrnn.errors import ConfigError, DataError
from convrnn.viz.grid import image_grid

SAMPLE = "Hamburgefonstiv 0123"


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\n".join(f"Line number {i} says the quick brown fox jumps over dog {i}." for i in range(12)),
                    encoding="utf-8")
    return str(path)


def small_config(tmp_path, text, **kw):
    base = dict(fonts=[], text=text, samples_per_font=12, val_fraction=0.25, seed=3,
                cache_dir=str(tmp_path / "cache"))
    base.update(kw)
    return F.FontsDataConfig(**base)


# ----------------------------------------------------------------------------------- fonts

def test_default_fonts_are_five_distinct_faces_that_render():
    fonts = F.default_fonts()
    assert len(fonts) >= 5
    assert len({f.name for f in fonts}) == len(fonts) and len({f.path for f in fonts}) == len(fonts)
    images = []
    for f in fonts:
        assert os.path.isfile(f.path)
        im = F.render_line(SAMPLE, f, height=16, width=64)
        assert im.shape == (16, 64) and im.dtype == np.uint8
        assert (im > 128).sum() > 60, f"{f.name} drew almost nothing"
        images.append(im.astype(np.float32) / 255)
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            diff = np.abs(images[i] - images[j]).mean()
            assert diff > 0.05, f"{fonts[i].name} and {fonts[j].name} look alike (mean diff {diff:.3f})"


def test_cmr10_keeps_letters_but_drops_remapped_ascii():
    cmr = next(f for f in F.default_fonts() if f.name == "cmr10")
    chars = F.supported_chars(cmr)
    assert set("abcxyzABCXYZ0123456789.,;:!?'") <= chars
    assert not set("<>{}|_\\") & chars          # TeX encoding draws these as other glyphs
    assert F.clean_lines(["a<b> {c}", "x"], F.default_fonts()) == ["a b c"]


@pytest.mark.parametrize("height", [16, 32])
def test_font_size_makes_reference_ink_fill_the_height(height):
    for f in F.default_fonts():
        face = ImageFont.truetype(f.path, F.font_size_for(f, height))
        _, top, _, bottom = face.getbbox(F.REFERENCE_TEXT)
        assert height - 5 <= bottom - top <= height - 2, f.name


def reference_prefix(text, font, height, width):
    """Slow reference: draw prefixes on a wide canvas; the longest whose ink stays inside ``width``."""
    face = ImageFont.truetype(font.path, F.font_size_for(font, height), layout_engine=ImageFont.Layout.BASIC)
    _, top, _, bottom = face.getbbox(F.REFERENCE_TEXT)
    first = Image.new("L", (width * 4, height * 2), 0)
    ImageDraw.Draw(first).text((width, 0), text[0], font=face, fill=255)
    x, y = width - np.nonzero(np.asarray(first).any(axis=0))[0].min(), (height - (bottom - top)) // 2 - top
    best = None
    for k in range(1, len(text) + 1):
        wide = Image.new("L", (width * 4, height), 0)
        ImageDraw.Draw(wide).text((x, y), text[:k].rstrip(), font=face, fill=255)
        wide = np.asarray(wide)
        if wide[:, width:].any():
            break
        best = wide[:, :width]
    return best


@pytest.mark.parametrize("text", ["Sphinx of black quartz, judge my vow.", "Wimbledon 1987: 42 matches!"])
def test_render_keeps_the_longest_prefix_that_fits_uncut(text):
    for f in F.default_fonts():
        got = F.render_line(text, f, height=16, width=64)
        np.testing.assert_array_equal(got, reference_prefix(text, f, 16, 64), err_msg=f.name)


def test_rendering_fills_the_width():
    lines = F.load_text_lines(None)
    rng = np.random.default_rng(0)
    for f in F.default_fonts():
        gaps = []
        for i in range(40):
            im = F.render_line(lines[i * 7], f, height=16, width=64, rng=rng, jitter=2)
            gaps.append(64 - 1 - np.nonzero(im.max(axis=0) > 64)[0].max())
        assert np.median(gaps) <= 5 and max(gaps) <= 22, (f.name, sorted(gaps))


def test_random_offset_and_jitter_vary_the_crop_deterministically():
    f = F.default_fonts()[0]
    line = F.load_text_lines(None)[0]
    a = [F.render_line(line, f, rng=np.random.default_rng(s)) for s in range(6)]
    b = [F.render_line(line, f, rng=np.random.default_rng(s)) for s in range(6)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len({x.tobytes() for x in a}) >= 5


# --------------------------------------------------------------------- scale jitter, resample

def test_scaled_glyphs_have_the_asked_reference_height():
    for font in F.default_fonts():
        for scale in (0.85, 1.0, 1.15):
            face, _ = F._scaled_layout(font, 16, scale)
            _, top, _, bottom = face.getbbox(F.REFERENCE_TEXT)
            assert abs((bottom - top) - scale * 14) <= 1.5, (font.name, scale, bottom - top)


def test_scale_jitter_varies_glyph_height_deterministically():
    font = F.default_fonts()[1]

    def ink_heights(seed, scale_jitter):
        # wide enough for the whole reference text, so the ink's rows span its ascenders to descenders
        rng = np.random.default_rng(seed)
        images = [F.render_line(F.REFERENCE_TEXT, font, height=20, width=320, rng=rng, jitter=0,
                                scale_jitter=scale_jitter) for _ in range(40)]
        rows = [np.nonzero(im.max(axis=1) > 64)[0] for im in images]
        return images, [int(r[-1] - r[0] + 1) for r in rows]

    a, heights = ink_heights(0, 0.15)
    b, _ = ink_heights(0, 0.15)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    _, fixed = ink_heights(0, 0.0)
    assert len(set(fixed)) == 1
    assert min(heights) <= 16 and max(heights) >= 19 and len(set(heights)) >= 4, sorted(heights)


def test_resampled_crops_are_resized_from_a_larger_or_smaller_drawing():
    font, line = F.default_fonts()[0], "Judge quickly: gray boxes hold 42 jumping frogs."
    direct = [F.render_line(line, font, rng=np.random.default_rng(s), resample=0.0) for s in range(20)]
    resampled = [F.render_line(line, font, rng=np.random.default_rng(s), resample=1.0) for s in range(20)]
    again = [F.render_line(line, font, rng=np.random.default_rng(s), resample=1.0) for s in range(20)]
    assert all(im.shape == (16, 64) and im.dtype == np.uint8 for im in resampled)
    assert all(np.array_equal(x, y) for x, y in zip(resampled, again))
    assert not any(np.array_equal(x, y) for x, y in zip(direct, resampled))
    assert all((im > 128).sum() > 40 for im in resampled)       # still a line of text, not a smear


def test_scale_jitter_and_resample_are_seeded_config_fields_in_the_cache_key(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text("\n".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(8)))
    base = dict(text=str(text), samples_per_font=6, val_fraction=0.25, cache_dir=str(tmp_path / "c"))
    plain, _, meta0 = F.make_fonts_data(F.FontsDataConfig(scale_jitter=0.0, **base))
    scaled, _, meta1 = F.make_fonts_data(F.FontsDataConfig(**base))
    again, _, _ = F.make_fonts_data(F.FontsDataConfig(**base), use_cache=False)
    assert F.FontsDataConfig().scale_jitter > 0 and meta0["cache"] != meta1["cache"]
    direct, direct_val, meta2 = F.make_fonts_data(F.FontsDataConfig(resample=0.0, **base))
    resized, resized_val, _ = F.make_fonts_data(F.FontsDataConfig(resample=1.0, **base))
    assert meta2["cache"] not in (meta0["cache"], meta1["cache"])
    assert not np.array_equal(direct.images, resized.images)
    np.testing.assert_array_equal(direct_val.images, resized_val.images)   # validation is never resized
    np.testing.assert_array_equal(scaled.images, again.images)
    assert not np.array_equal(plain.images, scaled.images)
    with pytest.raises(ConfigError, match="data.scale_jitter"):
        F.make_fonts_data(F.FontsDataConfig(scale_jitter=0.7, **base))
    with pytest.raises(ConfigError, match="data.resample"):
        F.make_fonts_data(F.FontsDataConfig(resample=1.5, **base))


# ------------------------------------------------------------------------------------ data

def test_split_by_line_is_disjoint_balanced_and_seeded(tmp_path, text_file):
    cfg = small_config(tmp_path, text_file)
    train, val, meta = F.make_fonts_data(cfg, use_cache=False)
    k = len(meta["classes"])
    assert (len(train), len(val)) == (9 * k, 3 * k)
    assert not set(train.line_ids.tolist()) & set(val.line_ids.tolist())
    assert meta["num_lines"] == {"train": 9, "val": 3}
    assert np.bincount(train.labels, minlength=k).tolist() == [9] * k
    x, y = train[0]
    assert x.shape == (1, 16, 64) and x.dtype == torch.float32 and 0 <= float(x.min()) and float(x.max()) == 1.0
    assert isinstance(y, int) and meta["height"] == 16 and meta["width"] == 64 and len(meta["fonts"]) == k

    again, _, _ = F.make_fonts_data(cfg, use_cache=False)
    np.testing.assert_array_equal(train.images, again.images)
    np.testing.assert_array_equal(train.line_ids, again.line_ids)
    other, other_val, _ = F.make_fonts_data(small_config(tmp_path, text_file, seed=4), use_cache=False)
    assert not np.array_equal(train.images, other.images)
    assert not set(other.line_ids.tolist()) & set(other_val.line_ids.tolist())


def count_renders(monkeypatch):
    calls = []
    real = F.render_line

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "render_line", counting)
    return calls


def test_cache_loads_without_rendering_and_rerenders_on_change(tmp_path, text_file, monkeypatch):
    calls = count_renders(monkeypatch)
    cfg = small_config(tmp_path, text_file)
    seen = []
    train, val, meta = F.make_fonts_data(cfg, progress=lambda done, total: seen.append((done, total)))
    n = len(train) + len(val)
    assert len(calls) == n and seen[-1] == (n, n) and os.path.isfile(meta["cache"])

    train2, _, _ = F.make_fonts_data(cfg)
    assert len(calls) == n
    np.testing.assert_array_equal(train.images, train2.images)

    F.make_fonts_data(small_config(tmp_path, text_file, jitter=1))
    assert len(calls) == 2 * n
    with open(text_file, "a", encoding="utf-8") as fh:
        fh.write("\nOne more line about a cat on a warm stone wall.")
    F.make_fonts_data(cfg)
    assert len(calls) == 3 * n


def test_corrupt_cache_is_rendered_again(tmp_path, text_file, monkeypatch):
    cfg = small_config(tmp_path, text_file)
    train, _, meta = F.make_fonts_data(cfg)
    with open(meta["cache"], "wb") as fh:
        fh.write(b"PK\x03\x04 not really a zip file")
    calls = count_renders(monkeypatch)
    again, _, _ = F.make_fonts_data(cfg)
    assert len(calls) > 0
    np.testing.assert_array_equal(train.images, again.images)
    calls.clear()
    F.make_fonts_data(cfg)                      # the rewritten cache is good again
    assert not calls


def test_default_cache_dir_follows_environment(tmp_path, text_file, monkeypatch):
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path / "root"))
    _, _, meta = F.make_fonts_data(small_config(tmp_path, text_file, cache_dir=None))
    assert meta["cache"].startswith(str(tmp_path / "root" / "fonts"))
    assert os.path.isfile(meta["cache"])


# ---------------------------------------------------------------------------------- errors

def test_font_errors_name_the_path(tmp_path):
    missing = str(tmp_path / "nope.ttf")
    with pytest.raises(DataError, match="nope.ttf"):
        F.resolve_fonts([missing])
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match="notes.txt"):
        F.resolve_fonts([str(text)])
    fake = tmp_path / "fake.ttf"
    fake.write_bytes(b"this is not a font at all" * 10)
    with pytest.raises(DataError, match="fake.ttf"):
        F.resolve_fonts([str(fake)])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        F.resolve_fonts([str(empty)])


def test_font_folders_and_duplicate_names(tmp_path):
    sans = F.default_fonts()[0]
    folder = tmp_path / "fonts"
    folder.mkdir()
    (folder / "DejaVuSans.ttf").write_bytes(open(sans.path, "rb").read())
    specs = F.resolve_fonts([sans.path, str(folder)])
    assert [s.name for s in specs] == ["DejaVuSans", "DejaVuSans-2"]
    assert F.resolve_fonts([]) == F.default_fonts()


def test_a_folder_copied_from_a_mac_reads_its_fonts_and_not_their_hidden_companions(tmp_path):
    sans, serif = F.default_fonts()[:2]
    folder = tmp_path / "fonts"
    folder.mkdir()
    for spec in (sans, serif):
        (folder / f"{spec.name}.ttf").write_bytes(open(spec.path, "rb").read())
        (folder / f"._{spec.name}.ttf").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 200)  # AppleDouble, no font
    (folder / "nested").mkdir()
    assert [s.name for s in F.resolve_fonts([str(folder)])] == ["DejaVuSans", "DejaVuSerif"]


def test_fonts_of_formats_not_read_are_named(tmp_path, caplog):
    folder = tmp_path / "web"
    folder.mkdir()
    (folder / "Roboto.woff2").write_bytes(b"wOF2" + b"\x00" * 100)
    with pytest.raises(DataError, match=r"in folder .*web, found none; 1 font file of a format not read "
                                        r"\(Roboto.woff2\): convert them to .ttf or .otf"):
        F.resolve_fonts([str(folder)])
    (folder / "DejaVuSans.ttf").write_bytes(open(F.default_fonts()[0].path, "rb").read())
    with caplog.at_level("WARNING", logger="convrnn"):
        assert [s.name for s in F.resolve_fonts([str(folder)])] == ["DejaVuSans"]
    assert any("Roboto.woff2" in r.getMessage() for r in caplog.records)
    nested = tmp_path / "families"
    (nested / "Roboto").mkdir(parents=True)
    with pytest.raises(DataError, match=r"found none \(its 1 subfolder is not searched: give each\)"):
        F.resolve_fonts([str(nested)])


def test_a_collection_of_faces_says_which_face_its_class_is(tmp_path, caplog):
    ttlib = pytest.importorskip("fontTools.ttLib")  # installed with matplotlib
    TTCollection, TTFont = ttlib.TTCollection, ttlib.TTFont
    sans, serif = F.default_fonts()[:2]
    collection = TTCollection()
    collection.fonts = [TTFont(sans.path), TTFont(serif.path)]
    path = tmp_path / "Family.ttc"
    collection.save(str(path))
    with caplog.at_level("WARNING", logger="convrnn"):
        (spec,) = F.resolve_fonts([str(path)])
    assert spec.name == "Family"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "Family.ttc holds 2 faces: its class is drawn in the first, DejaVu Sans Book" in warning


@pytest.mark.parametrize("encoding, found", [("utf-16", "UTF-16LE text"), ("utf-16-le", "a NUL byte")])
def test_text_lines_drop_a_byte_order_mark_and_refuse_utf16(tmp_path, encoding, found):
    path = tmp_path / "book.txt"
    path.write_bytes("\ufeffFirst line\r\nsecond\r\n".encode("utf-8"))
    assert F.load_text_lines(str(path)) == ["First line", "second"]
    path.write_bytes("First line\nsecond\n".encode(encoding))
    with pytest.raises(DataError, match=found + ".*book.txt.*iconv"):
        F.load_text_lines(str(path))


def test_a_font_without_the_reference_letters_is_drawn_at_the_height_not_the_largest_size(tmp_path):
    subset = pytest.importorskip("fontTools.subset")  # installed with matplotlib
    options = subset.Options()
    options.notdef_outline = False  # a missing glyph draws nothing, as in many fonts of digits only
    font = subset.load_font(F.default_fonts()[1].path, options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(text="0123456789 ")
    subsetter.subset(font)
    path = tmp_path / "Digits.ttf"
    subset.save_font(font, str(path), options)
    (spec,) = F.resolve_fonts([str(path)])
    assert F.font_size_for(spec, 16) < 4 * 16
    crop = F.render_line("0123 4567 89", spec, height=16, width=64)
    rows = np.nonzero(crop.max(axis=1) > 127)[0]
    assert 6 <= len(rows) <= 14 and rows[0] > 0 and rows[-1] < 15  # whole digits inside the crop
    text = tmp_path / "numbers.txt"
    text.write_text("\n".join(f"{i * 7919} {i * 104729}" for i in range(1, 9)), encoding="utf-8")
    config = small_config(tmp_path, str(text), fonts=[str(path), F.default_fonts()[0].path])
    train, val, meta = F.make_fonts_data(config)
    assert set(meta["alphabet"]) <= set("0123456789 ") and train.images.max() == 255


def test_punctuation_drawn_with_a_glyph_of_an_equivalent_character_is_kept(monkeypatch):
    """Liberation Sans maps ';' to its glyph 'uni037E' (the Greek question mark, which is ';' once normalised)
    and '-' to 'uni00AD' (the soft hyphen): both draw what they should. cmr10's '<' ('exclamdown') does not."""
    import matplotlib.ft2font

    names = {1: "uni037E", 2: "uni00AD", 3: "exclamdown", 4: "comma", 5: "uni0021", 6: "uni00A1"}

    class Face:
        def __init__(self, path):
            pass

        def get_charmap(self):
            return {ord(";"): 1, ord("-"): 2, ord("<"): 3, ord(","): 4, ord("!"): 5, ord(":"): 6}

        def get_glyph_name(self, glyph):
            return names[glyph]

    monkeypatch.setattr(matplotlib.ft2font, "FT2Font", Face)
    assert F.supported_chars(F.FontSpec("shared-glyphs", "shared.ttf")) == frozenset(";-,!")


def test_text_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="missing.txt"):
        F.load_text_lines(str(tmp_path / "missing.txt"))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf".encode() + b"\xe9 au lait\n")
    with pytest.raises(DataError, match=r"byte offset 3 .*latin1.txt .*converts with iconv, for example iconv -f "
                                        r"LATIN1 -t UTF-8$"):
        F.load_text_lines(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n")
    with pytest.raises(DataError, match="empty.txt"):
        F.load_text_lines(str(empty))
    with pytest.raises(DataError, match="empty.txt"):
        F.make_fonts_data(small_config(tmp_path, str(empty)))


def test_text_lines_are_stripped_and_default_corpus_is_large(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("  first line \n\n\tsecond\n", encoding="utf-8")
    assert F.load_text_lines(str(path)) == ["first line", "second"]
    assert len(F.load_text_lines(None)) >= 300


def test_bad_config_values(tmp_path, text_file):
    with pytest.raises(ConfigError, match="val_fraction"):
        F.make_fonts_data(small_config(tmp_path, text_file, val_fraction=1.0))
    one = tmp_path / "one.txt"
    one.write_text("just a single line of text\n")
    with pytest.raises(DataError, match="one.txt"):
        F.make_fonts_data(small_config(tmp_path, str(one)))


# --------------------------------------------------------------------------------- preview

def test_preview_grid_has_one_row_per_font(tmp_path):
    fonts = F.default_fonts()[:3]
    from convrnn.recipes.fonts import preview_grid
    out = preview_grid(fonts, F.load_text_lines(None)[:20], str(tmp_path / "sub" / "preview.png"), samples=4)
    with Image.open(out) as im:
        w, h = im.size
    assert h == 3 * (16 * 4 + 4) + 4
    assert w > 4 * (64 * 4 + 4) + 4            # plus a label column
    assert not [p for p in os.listdir(tmp_path / "sub") if p != "preview.png"]   # no temp files left


def test_image_grid_size_and_scaling():
    a = np.zeros((2, 3), dtype=np.uint8)
    b = np.ones((2, 3), dtype=np.float32)
    grid = np.asarray(image_grid([[a, b]], ["x"], scale=2, gap=1, label_width=5, background=100))
    assert grid.shape == (1 + 4 + 1, 5 + 2 * (6 + 1) + 1)
    np.testing.assert_array_equal(grid[1:5, 6:12], 0)
    np.testing.assert_array_equal(grid[1:5, 13:19], 255)
