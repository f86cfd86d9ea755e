"""Page XML (ALTO, PAGE): reading lines from pages, bad input, the cache, writing texts back, predict."""
# H height, W width
import json
import logging
import re
import shutil
import subprocess
import sys
import unicodedata
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from conftest import ROOT, SHARED_DATA
from convrnn.cli import main
from convrnn.data import pages
from convrnn.data.lines import read_lines
from convrnn.errors import ConfigError, DataError

from helpers import run_cli

PAGE_W, PAGE_H = 480, 360
PAPER, INK = 235, 20

# id -> polygon (or None), baseline (or None), text (or None), the ink block at the start of its reading
# direction (x0, y0, x1, y1) and the box its thin strokes go in
LINES = {
    "l_straight": ([(20, 20), (300, 20), (300, 60), (20, 60)], [(20, 52), (300, 52)], "ab",
                   (25, 28, 60, 50), (70, 30, 295, 50)),
    "l_band": (None, [(20, 112), (300, 112)], "cd", (25, 88, 60, 110), (70, 90, 295, 110)),
    # right to left: the letters stand upside down on the page, their baseline near the polygon's top
    "l_rtl": ([(20, 142), (300, 142), (300, 200), (20, 200)], [(300, 150), (20, 150)], "ef",
              (260, 152, 295, 180), (25, 155, 250, 180)),
    # top to bottom: the letters' tops point right, their baseline at the polygon's left
    "l_vertical": ([(380, 20), (440, 20), (440, 300), (380, 300)], [(390, 20), (390, 300)], "ij",
                   (395, 25, 435, 60), (395, 70, 435, 295)),
    # float and negative coordinates: the line starts off the page and is clipped to it
    "l_float": ([(-15.5, 205.25), (150.75, 205.25), (150.75, 240.5), (-15.5, 240.5)],
                [(-15.5, 232.5), (150.75, 232.5)], "g h", (0, 210, 30, 230), (40, 212, 145, 230)),
    "l_notext": ([(160, 250), (300, 250), (300, 290), (160, 290)], [(160, 282), (300, 282)], None,
                 (165, 255, 190, 278), (200, 258, 295, 278)),
    "l_noarea": ([(20, 300), (100, 300), (200, 300)], None, "zz", None, None),
    "l_outside": ([(500, 10), (560, 10), (560, 40), (500, 40)], None, "yy", None, None),
}
GOOD = ["l_straight", "l_band", "l_rtl", "l_vertical", "l_float"]
ALTO_NS = "http://www.loc.gov/standards/alto/ns-v4#"
PAGE_NS = {2013: "http://schema.primaresearch.org/PAGE/gts/pagecontent/2013-07-15",
           2019: "http://schema.primaresearch.org/PAGE/gts/pagecontent/2019-07-15"}


def _page_image(path: Path, seed: int = 0) -> None:
    """A paper page with, for every line, a heavy block where its reading starts and thin strokes after."""
    rng = np.random.default_rng(seed)
    im = Image.new("L", (PAGE_W, PAGE_H), PAPER)
    draw = ImageDraw.Draw(im)
    for _, _, _, block, strokes in LINES.values():
        if block is None:
            continue
        draw.rectangle(block, fill=INK)
        x0, y0, x1, y1 = strokes
        vertical = (y1 - y0) > (x1 - x0)
        for k in range(8):  # short strokes across the line's direction
            if vertical:
                y = int(rng.integers(y0, y1 - 3))
                draw.rectangle((x0, y, x1, y + 2), fill=INK)
            else:
                x = int(rng.integers(x0, x1 - 3))
                draw.rectangle((x, y0, x + 2, y1), fill=INK)
    im.save(path)


def _pts(points, sep=" ") -> str:
    return " ".join(f"{x:g}{sep}{y:g}" for x, y in points)


def _alto_line(line_id, poly, base, text) -> str:
    attrs = f'ID="{line_id}"'
    if base is not None:
        attrs += f' BASELINE="{_pts(base)}"'
    if poly is not None:
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
        attrs += f' HPOS="{min(xs):g}" VPOS="{min(ys):g}" WIDTH="{max(xs) - min(xs):g}" HEIGHT="{max(ys) - min(ys):g}"'
    shape = f'<Shape><Polygon POINTS="{_pts(poly)}"/></Shape>' if poly is not None else ""
    if text is None:
        words = ""
    else:  # one String per word, SP between
        words = "<SP/>".join(f'<String CONTENT="{w}"/>' for w in text.split(" "))
    return f"\n        <TextLine {attrs}>{shape}{words}</TextLine>"


def write_alto(folder: Path, name: str = "page", image: str = "page.png", lines=LINES, make_image: bool = True) -> Path:
    body = "".join(_alto_line(k, v[0], v[1], v[2]) for k, v in lines.items())
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<!-- a page made by the tests -->\n'
           f'<alto xmlns="{ALTO_NS}" xmlns:xlink="http://www.w3.org/1999/xlink">\n'
           f"  <Description><MeasurementUnit>pixel</MeasurementUnit>\n"
           f"    <sourceImageInformation><fileName>{image}</fileName></sourceImageInformation></Description>\n"
           f'  <Layout><Page WIDTH="{PAGE_W}" HEIGHT="{PAGE_H}" ID="p1"><PrintSpace><TextBlock ID="b1">'
           f"{body}\n      </TextBlock></PrintSpace></Page></Layout>\n</alto>\n")
    return _save(folder, name, image, make_image, xml)


def write_page(folder: Path, name: str = "page", image: str = "page.png", version: int = 2019, lines=LINES,
               make_image: bool = True) -> Path:
    body = []
    for line_id, (poly, base, text, _, _) in lines.items():
        parts = [f'<Coords points="{_pts(poly, ",")}"/>' if poly is not None else '<Coords points=""/>']
        if base is not None:
            parts.append(f'<Baseline points="{_pts(base, ",")}"/>')
        if text is not None:
            parts.append(f"<TextEquiv><Unicode>{text}</Unicode></TextEquiv>")
        body.append(f'\n      <TextLine id="{line_id}">\n        ' + "\n        ".join(parts) + "\n      </TextLine>")
    xml = (f'<?xml version="1.0" encoding="UTF-8"?>\n<PcGts xmlns="{PAGE_NS[version]}">\n'
           f"  <Metadata><Creator>tests</Creator></Metadata>\n"
           f'  <Page imageFilename="{image}" imageWidth="{PAGE_W}" imageHeight="{PAGE_H}">\n'
           f'    <TextRegion id="r1"><Coords points="0,0 {PAGE_W},0 {PAGE_W},{PAGE_H} 0,{PAGE_H}"/>'
           f"{''.join(body)}\n    </TextRegion>\n  </Page>\n</PcGts>\n")
    return _save(folder, name, image, make_image, xml)


def _save(folder: Path, name: str, image: str, make_image: bool, xml: str) -> Path:
    """``folder/name.xml`` holding ``xml``, with the page image beside it (unless it exists or is not wanted)."""
    folder.mkdir(parents=True, exist_ok=True)
    if make_image and not (folder / image).exists():
        _page_image(folder / image)
    path = folder / f"{name}.xml"
    path.write_text(xml, encoding="utf-8")
    return path


def _starts_left(image: np.ndarray) -> bool:
    """The heavy block that marks where a line starts is at the left of its ink-bright image."""
    quarter = max(1, image.shape[1] // 4)
    return image[:, :quarter].mean() > 2 * image[:, -quarter:].mean()


# ------------------------------------------------------------------------------------ reading

@pytest.mark.parametrize("kind", ["alto", "page2013", "page2019"])
def test_lines_are_cut_turned_and_bad_ones_named(tmp_path, kind, caplog):
    xml = (write_alto(tmp_path) if kind == "alto" else
           write_page(tmp_path, version=2013 if kind == "page2013" else 2019))
    with caplog.at_level(logging.WARNING):
        lines = read_lines(str(xml), height=16, workers=1)
    assert lines.names == [f"page.xml:{k}" for k in GOOD]  # file order
    assert lines.texts == ["ab", "cd", "ef", "ij", "g h"]
    assert all(im.shape[0] == 16 and im.dtype == np.uint8 for im in lines.images)
    for name, image in zip(lines.names, lines.images):
        assert image.shape[1] > 2 * image.shape[0], name  # read along the line, vertical one included
        assert _starts_left(image), name  # right-to-left and top-to-bottom lines turned to read left to right
    assert lines.skipped == {
        "page.xml:l_notext": "page.xml:l_notext: no text",
        "page.xml:l_noarea": "page.xml:l_noarea: polygon with no area",
        "page.xml:l_outside": "page.xml:l_outside: polygon outside the page (480x360 pixels)"}
    assert "skipped 3 of 8 lines" in caplog.text and "l_noarea" in caplog.text
    with pytest.raises(DataError, match="l_notext: no text"):
        read_lines(str(xml), height=16, workers=1, strict=True)


def test_polygon_cut_is_exact_and_outside_is_background(tmp_path):
    xml = write_alto(tmp_path, lines={"l_straight": LINES["l_straight"]})
    page = pages.parse_page(xml)
    gray = np.asarray(Image.open(tmp_path / "page.png"))
    line = pages.cut_line(gray, page.lines[0], spacing=50.0)
    # the rectangle 20..300 x 20..60 read as it lies; ink 255 where the page has ink, paper 0
    expected = (gray[20:61, 20:301] < 128).astype(np.uint8) * 255
    assert line.shape == expected.shape
    assert np.array_equal(line, expected)
    # a triangle: pixels outside it become background (0) even where the page has ink
    triangle = [(20.0, 20.0), (300.0, 20.0), (20.0, 60.0)]
    cut = pages.cut_line(gray, pages.PageLine(0, "t", None, np.array(triangle), np.array([[20.0, 55], [300, 55]])), 50)
    mask = Image.new("L", (PAGE_W, PAGE_H), 0)
    ImageDraw.Draw(mask).polygon(triangle, fill=255, outline=255)
    inside = np.asarray(mask)[20:61, 20:301] > 0
    assert np.array_equal(cut, np.where(inside, expected, 0))
    assert (expected[~inside] > 0).sum() > 100  # ink that the triangle leaves out


def test_polygon_moments_set_the_direction_of_a_line_without_baseline():
    # a long thin polygon with many vertices along its top edge only: its area, not its vertices, decides
    top = [(x, 20.0 + (x % 20 == 0)) for x in range(300, 19, -10)]
    poly = np.array([(20.0, 60.0), (300.0, 60.0)] + top)
    assert np.allclose(pages.reading_direction(None, poly), [1, 0], atol=0.01)
    upright = poly[:, ::-1]  # the same, standing: read top to bottom
    assert np.allclose(pages.reading_direction(None, upright), [0, 1], atol=0.01)
    assert np.allclose(pages.reading_direction(None, np.array([[0.0, 0], [10, 0], [10, 10], [0, 10]])), [1, 0])
    cov = pages._second_moments(np.array([[0.0, 0], [12, 0], [12, 6], [0, 6]]))
    assert np.allclose(cov, [[12.0, 0], [0, 3.0]])  # a w x h rectangle: w^2/12, h^2/12


def test_baseline_band_follows_line_spacing(tmp_path):
    xml = write_alto(tmp_path)
    page = pages.parse_page(xml)
    spacing = pages.line_spacing([pages._distinct(ln.baseline) for ln in page.lines], PAGE_H)
    # each line's nearest baseline among those that overlap it along x: 60, 38, 38, 82.5, 132
    assert spacing == 60.0
    band = pages.baseline_band(np.array([[20.0, 112], [300, 112]]), spacing)
    assert band[:, 1].min() == pytest.approx(112 - pages.BAND_ABOVE * 60)
    assert band[:, 1].max() == pytest.approx(112 + pages.BAND_BELOW * 60)
    assert pages.line_spacing([band[:2]], PAGE_H) == PAGE_H / pages.DEFAULT_LINES_PER_PAGE  # one line alone


def test_curved_baseline_is_straightened(tmp_path):
    # ink drawn along a sine-shaped baseline; the cut line keeps it on one row band
    im = Image.new("L", (400, 200), PAPER)
    draw = ImageDraw.Draw(im)
    xs = np.arange(20, 381, 10, dtype=float)
    ys = 100 + 25 * np.sin((xs - 20) / 360 * 2 * np.pi)
    for x, y in zip(xs, ys):
        draw.rectangle((x - 3, y - 12, x + 3, y), fill=INK)  # a stroke standing on the baseline
    gray = np.asarray(im)
    base = np.stack([xs, ys], 1)
    poly = np.concatenate([base - [0, 30], (base + [0, 10])[::-1]])
    line = pages.cut_line(gray, pages.PageLine(0, "c", None, poly, base), spacing=40.0)
    assert line.shape[0] <= 42  # 40 pixels tall as drawn, not 40 + the curve's 50
    rows = [np.nonzero(line[:, c] > 128)[0] for c in range(line.shape[1])]
    bottoms = [r.max() for r in rows if len(r)]
    assert max(bottoms) - min(bottoms) <= 4  # strokes stand on one straight baseline (the page's moves 50)
    assert sum(len(r) > 0 for r in rows) >= 0.9 * len(xs) * 7  # no stroke cut off


def test_page_image_turned_by_exif_is_read_as_its_xml_describes(tmp_path):
    """A scan stored sideways with an EXIF orientation: turned when the XML's page size is the turned
    image's (it was drawn on what a viewer shows), read as stored when it is the stored one's."""
    upright_xml = write_alto(tmp_path / "a", "p")
    expected = pages.extract_page(upright_xml, 16)
    stored = Image.open(tmp_path / "a" / "page.png").transpose(Image.Transpose.ROTATE_90)  # 360 wide, 480 high
    exif = Image.Exif()
    exif[0x0112] = 6  # "turn 90 degrees clockwise to view"
    folder = tmp_path / "b"
    folder.mkdir()
    stored.save(folder / "page.jpg", exif=exif, quality=100, subsampling=0)
    got = pages.extract_page(write_alto(folder, "p", image="page.jpg"), 16)  # the XML says 480 x 360
    assert got.ids == expected.ids and got.page_error is None
    for a, b in zip(got.images, expected.images):
        assert a.shape == b.shape and np.abs(a.astype(int) - b.astype(int)).mean() < 8  # JPEG noise only
    assert pages._turned((480, 360), (480, 360)) and not pages._turned((480, 360), (360, 480))


def test_page_image_is_found_one_folder_up(tmp_path):
    # Transkribus: pages in page/, images beside that folder
    _page_image(tmp_path / "scan.png")
    xml = write_page(tmp_path / "page", image="scan.png", make_image=False)
    assert pages.find_image(pages.parse_page(xml)) == tmp_path / "scan.png"
    assert len(read_lines(str(tmp_path / "page"), height=16, workers=1)) == len(GOOD)


def _page_doc(body: str, image: str = "page.png") -> str:
    """A PAGE 2019 file of one region holding ``body``, on a page of PAGE_W x PAGE_H."""
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<PcGts xmlns="{PAGE_NS[2019]}">\n'
            f'  <Page imageFilename="{image}" imageWidth="{PAGE_W}" imageHeight="{PAGE_H}">\n'
            f'    <TextRegion id="r1"><Coords points="0,0 {PAGE_W},0 {PAGE_W},{PAGE_H} 0,{PAGE_H}"/>{body}\n'
            f"    </TextRegion>\n  </Page>\n</PcGts>\n")


def test_transcriptions_that_need_a_guess_are_named_not_read(tmp_path):
    """PAGE gives a TextEquiv one Unicode: a line whose TextEquiv has several, or only PlainText, or whose
    Words only partly have text, is left out of training, counted and named, not read as a guess (the
    first Unicode, the PlainText, the words that have text); likewise an ALTO String without CONTENT.
    predict still reads these lines."""
    poly, base = LINES["l_straight"][:2]

    def line(line_id, inner):
        return (f'\n      <TextLine id="{line_id}"><Coords points="{_pts(poly, ",")}"/>'
                f'<Baseline points="{_pts(base, ",")}"/>{inner}</TextLine>')

    def word(word_id, text):
        equiv = f"<TextEquiv><Unicode>{text}</Unicode></TextEquiv>" if text is not None else ""
        return f'<Word id="{word_id}"><Coords points="20,20 60,20 60,60"/>{equiv}</Word>'

    body = "".join([
        line("ranked", '<TextEquiv index="2"><Unicode>second</Unicode></TextEquiv>'
                       '<TextEquiv index="1"><Unicode>first</Unicode></TextEquiv>'),
        line("words", word("w1", "one") + word("w2", "two")),
        line("two_unicode", "<TextEquiv><Unicode>a</Unicode><Unicode>b</Unicode></TextEquiv>"),
        line("plain", "<TextEquiv><PlainText>p</PlainText></TextEquiv>"),
        line("some_words", word("w3", "one") + word("w4", None) + word("w5", "three")),
        line("untranscribed", word("w6", None))])
    xml = _save(tmp_path, "p", "page.png", True, _page_doc(body))
    lines = read_lines(str(xml), height=16, workers=1)
    assert lines.texts == ["first", "one two"]
    unusable = "transcription not usable"
    assert lines.skipped == {
        "p.xml:two_unicode": f"p.xml:two_unicode: {unusable} (a TextEquiv with 2 Unicode elements)",
        "p.xml:plain": f"p.xml:plain: {unusable} (a TextEquiv without Unicode, only PlainText)",
        "p.xml:some_words": f"p.xml:some_words: {unusable} (Words without text: 1 of 3, and no line-level text)",
        "p.xml:untranscribed": "p.xml:untranscribed: no text"}
    with pytest.raises(DataError, match="p.xml:two_unicode: transcription not usable"):
        read_lines(str(xml), height=16, workers=1, strict=True)
    read = pages.read_pages([xml], height=16, workers=1, cache=False)
    assert len(pages.collect_lines(read, ["p.xml"], require_text=False).names) == 6  # predict reads them all
    # ALTO: CONTENT is required, and a String without it is a word whose text is missing
    alto = write_alto(tmp_path / "alto", lines={"l_straight": LINES["l_straight"]})
    alto.write_text(alto.read_text(encoding="utf-8").replace(
        '<String CONTENT="ab"/>', '<String CONTENT="ab"/><SP/><String HPOS="90"/>'), encoding="utf-8")
    with pytest.raises(DataError, match=re.escape("page.xml:l_straight: transcription not usable "
                                                  "(Strings without CONTENT: 1 of 2)")):
        read_lines(str(alto), height=16, workers=1, strict=True)


def test_lines_sharing_an_id_are_each_counted_and_named_apart():
    """Line ids should be unique in a file, but a merged or hand-edited one can repeat them: every line
    is still counted, and named apart in file order (``a``, ``a#2``, ...), good and bad lines alike."""
    page = pages.PageLines(Path("p.xml"), pages.PAGE, [np.zeros((2, 2), np.uint8)] * 3, ["a", "a", "b"], [0, 1, 2],
                           [None, None, "x"], [None, None, None])
    got = pages.collect_lines([page], ["p.xml"])
    assert got.names == ["p.xml:b"] and got.skipped == {"p.xml:a": "p.xml:a: no text",
                                                        "p.xml:a#2": "p.xml:a#2: no text"}
    assert got.summary() == "skipped 2 of 3 lines (no text 2): p.xml:a: no text; p.xml:a#2: no text"
    # a bad line between two good ones of its id takes its place in the count
    page = pages.PageLines(Path("p.xml"), pages.PAGE, [np.zeros((2, 2), np.uint8)] * 2, ["a", "a"], [0, 2],
                           ["x", "y"], [None, None], bad=[pages.BadLine("a", pages.NO_AREA, "", 1)])
    got = pages.collect_lines([page], ["p.xml"])
    assert got.names == ["p.xml:a", "p.xml:a#3"] and got.skipped == {"p.xml:a#2": "p.xml:a#2: polygon with no area"}


def test_a_file_declaring_utf8_by_another_name_is_read_and_written(tmp_path):
    """"UTF8" is a common misspelling other XML readers take; the standard library's parser knows only
    "UTF-8" and would stop at the first accented letter."""
    _page_image(tmp_path / "page.png")
    body = ('<TextLine id="a"><Coords points="20,20 300,20 300,60 20,60"/>'
            "<TextEquiv><Unicode>été</Unicode></TextEquiv></TextLine>")
    src = tmp_path / "utf8.xml"
    src.write_bytes(_page_doc(body).replace('encoding="UTF-8"', 'encoding="UTF8"').encode("utf-8"))
    assert pages.parse_page(src).lines[0].text == "été"
    pages.write_page_texts(src, tmp_path / "out" / "utf8.xml", {0: ("hiver ✓", 0.5)})
    out = (tmp_path / "out" / "utf8.xml").read_bytes()
    assert out.startswith(b'<?xml version="1.0" encoding="UTF8"?>') and "hiver ✓".encode("utf-8") in out
    assert pages.parse_page(tmp_path / "out" / "utf8.xml").lines[0].text == "hiver ✓"

def test_page_image_of_another_shape_is_refused(tmp_path):
    """A page image resized keeps its lines (coordinates scaled); one of another shape is not the image
    the XML was drawn on (a scan.jpg beside a scan.tif's XML, another page) and is refused, not stretched."""
    xml = write_alto(tmp_path / "a", lines={"l_straight": LINES["l_straight"]})
    expected = pages.extract_page(xml, 16)
    resized = tmp_path / "b"
    resized.mkdir()
    Image.open(tmp_path / "a" / "page.png").resize((PAGE_W * 2, PAGE_H * 2), Image.NEAREST).save(resized / "page.png")
    got = pages.extract_page(write_alto(resized, lines={"l_straight": LINES["l_straight"]}, make_image=False), 16)
    assert got.page_error is None and got.ids == expected.ids == ["l_straight"]
    other = tmp_path / "c"
    other.mkdir()
    Image.open(tmp_path / "a" / "page.png").resize((PAGE_W, PAGE_W)).save(other / "page.png")
    xml = write_alto(other, lines={"l_straight": LINES["l_straight"]}, make_image=False)
    got = pages.extract_page(xml, 16)
    assert got.page_error is not None and got.page_error.kind == pages.BAD_IMAGE and not got.ids
    assert str(got.page_error) == (f"{xml}: page image page.png is 480x480 pixels, and the XML describes a page "
                                   f"of 480x360, another shape (not the image its lines were drawn on)")


def test_page_image_names_decoded_and_near_misses_named(tmp_path):
    _page_image(tmp_path / "scan 1.png")
    for name in ["scan%201.png", "file:///elsewhere/scan%201.png", "https://host/iiif/scan%201.png?size=full",
                 "C:\\scans\\scan 1.png", "sub/dir/scan 1.png"]:
        xml = write_page(tmp_path, "p", image=name, make_image=False)
        assert pages.find_image(pages.parse_page(xml)) == tmp_path / "scan 1.png", name
    # a name relative to the folder above the XML's (an OCR-D workspace: OCR-D-GT/p.xml, OCR-D-IMG/scan.png)
    (tmp_path / "IMG").mkdir()
    _page_image(tmp_path / "IMG" / "scan.png")
    xml = write_page(tmp_path / "GT", "p", image="IMG/scan.png", make_image=False)
    assert pages.find_image(pages.parse_page(xml)) == tmp_path / "IMG" / "scan.png"
    # another extension or case is named, never used in its place
    case_sensitive = not (tmp_path / "SCAN 1.PNG").exists()  # not so on macOS and Windows
    for name in ["scan 1.tif"] + (["SCAN 1.PNG"] if case_sensitive else []):
        xml = write_page(tmp_path, "p", image=name, make_image=False)
        with pytest.raises(pages.PageError) as e:
            pages.find_image(pages.parse_page(xml))
        assert str(e.value) == (f"{xml}: page image {name!r} not found (looked in {tmp_path} and {tmp_path.parent}); "
                                f"found {tmp_path / 'scan 1.png'}, whose name differs in extension or case "
                                f"(fix the XML or the file name)")


def test_a_missing_image_of_a_page_in_the_working_folder_names_that_folder_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_page(tmp_path, "p", image="gone.png", make_image=False)
    with pytest.raises(pages.PageError, match=r"^p.xml: page image 'gone.png' not found \(looked in \.\)$"):
        pages.find_image(pages.parse_page("p.xml"))


def test_alto_in_tenths_of_millimetres_is_scaled_by_its_page_size(tmp_path):
    """ALTO's mm10 and inch1200 coordinates are scaled to the image by the Page's WIDTH and HEIGHT (as its
    schema says); without them, or in a unit ALTO does not have, the file is refused."""
    chosen = {k: LINES[k] for k in ("l_straight", "l_band", "l_rtl")}
    expected = pages.extract_page(write_alto(tmp_path / "px", lines=chosen), 16)
    half = {k: (None if poly is None else [(x / 2, y / 2) for x, y in poly],
                None if base is None else [(x / 2, y / 2) for x, y in base], text, a, b)
            for k, (poly, base, text, a, b) in chosen.items()}
    folder = tmp_path / "mm10"
    xml = write_alto(folder, lines=half)
    doc = xml.read_text(encoding="utf-8").replace(f'WIDTH="{PAGE_W}" HEIGHT="{PAGE_H}"',
                                                  f'WIDTH="{PAGE_W / 2:g}" HEIGHT="{PAGE_H / 2:g}"')
    xml.write_text(doc.replace(">pixel<", ">mm10<"), encoding="utf-8")
    got = pages.extract_page(xml, 16)
    assert got.page_error is None and got.ids == expected.ids == list(chosen)
    assert all(np.array_equal(a, b) for a, b in zip(got.images, expected.images))
    xml.write_text(doc.replace(">pixel<", ">inch1200<").replace(f'WIDTH="{PAGE_W / 2:g}" HEIGHT="{PAGE_H / 2:g}" ', ""),
                   encoding="utf-8")
    with pytest.raises(pages.PageError, match="coordinates in 'inch1200' and no Page WIDTH and HEIGHT to scale"):
        pages.parse_page(xml)
    xml.write_text(doc.replace(">pixel<", ">points<"), encoding="utf-8")
    with pytest.raises(pages.PageError, match=re.escape("MeasurementUnit 'points' is none of ALTO's")):
        pages.parse_page(xml)


def test_bad_pages_are_counted_and_named(tmp_path, caplog):
    folder = tmp_path / "pages"
    write_alto(folder, "a_good")
    write_alto(folder, "b_noimage", image="missing.png", make_image=False)
    (folder / "c_broken.xml").write_text("<alto><Layout><Page></Layout></alto>", encoding="utf-8")
    (folder / "d_mets.xml").write_text('<mets xmlns="http://www.loc.gov/METS/"/>', encoding="utf-8")
    with caplog.at_level(logging.INFO):
        lines = read_lines(str(folder), height=16, workers=1)
    assert len(lines) == len(GOOD) and all(n.startswith("a_good.xml:") for n in lines.names)
    assert "b_noimage.xml" in lines.skipped and "missing.png' not found" in lines.skipped["b_noimage.xml"]
    assert "c_broken.xml" in lines.skipped and "XML does not parse" in lines.skipped["c_broken.xml"]
    assert "d_mets.xml" not in lines.skipped and "d_mets.xml: not ALTO or PAGE XML" in caplog.text
    assert "and 2 of 3 pages" in caplog.text
    # the METS file is not counted as a page that failed (the good page may come from the cache)
    assert ", 2 unusable (named below), 1 not ALTO or PAGE XML, " in caplog.text
    with pytest.raises(DataError, match="a_good.xml:l_notext: no text"):  # the first in file order
        read_lines(str(folder), height=16, workers=1, strict=True)
    with pytest.raises(DataError, match="b_noimage.xml: page image 'missing.png' not found "
                                        + re.escape(f"(looked in {folder} and {tmp_path})")):
        read_lines(str(folder / "b_noimage.xml"), height=16, workers=1, strict=True)
    with pytest.raises(DataError, match=r"c_broken.xml: XML does not parse \(mismatched tag"):
        read_lines(str(folder / "c_broken.xml"), height=16, strict=True)
    with pytest.raises(DataError, match="d_mets.xml: not ALTO or PAGE XML"):
        read_lines(str(folder / "d_mets.xml"), height=16)
    # an unreadable image
    (folder / "page.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"a_good.xml: .*page.png: not a readable image.*; no transcribed lines left"):
        read_lines(str(folder / "a_good.xml"), height=16, workers=1)


def test_coordinates_that_do_not_parse_are_named_in_the_files_terms():
    with pytest.raises(ValueError, match=r"^'abc' is not a number, in '1,2 abc,4'$"):
        pages.parse_points("1,2 abc,4")
    with pytest.raises(ValueError, match="expected finite numbers"):
        pages.parse_points("1,2 3,inf")


def test_sources_folder_glob_and_file(tmp_path):
    write_alto(tmp_path / "train", "p1")
    write_page(tmp_path / "train", "p2")
    by_folder = read_lines(str(tmp_path / "train"), height=16, workers=1)
    by_glob = read_lines(str(tmp_path / "*" / "p*.xml"), height=16, workers=1)
    assert by_folder.names == [f"p1.xml:{k}" for k in GOOD] + [f"p2.xml:{k}" for k in GOOD]
    assert by_glob.names == [f"train/{n}" for n in by_folder.names]  # below the pattern's fixed folder
    assert all(np.array_equal(a, b) for a, b in zip(by_folder.images, by_glob.images))
    with pytest.raises(DataError, match="p3.xml: no such page XML file"):
        read_lines(str(tmp_path / "train" / "p3.xml"), height=16)
    with pytest.raises(DataError, match="matches no .xml files"):
        read_lines(str(tmp_path / "*.xml"), height=16)
    (tmp_path / "train" / "x.gt.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match="both page XML files and .gt.txt"):
        read_lines(str(tmp_path / "train"), height=16)


def test_text_is_normalised(tmp_path):
    decomposed = unicodedata.normalize("NFD", "é  tê")
    lines_def = {"l_straight": LINES["l_straight"][:2] + (decomposed,) + LINES["l_straight"][3:]}
    xml = write_page(tmp_path, lines=lines_def)
    assert read_lines(str(xml), height=16).texts == ["é tê"]  # NFC, whitespace collapsed
    assert read_lines(str(xml), height=16, normalize="NFD").texts == [unicodedata.normalize("NFD", "é tê")]
    assert read_lines(str(xml), height=16, normalize="none").texts == [decomposed.replace("  ", " ")]
    with pytest.raises(ConfigError, match="data.normalize"):
        read_lines(str(xml), height=16, normalize="nfc")


def test_parallel_extraction_matches_one_process(tmp_path):
    paths = [write_alto(tmp_path, "p1"), write_page(tmp_path, "p2")]
    one = pages.read_pages(paths, height=16, workers=1, cache=False)
    two = pages.read_pages(paths, height=16, workers=2, cache=False)
    for a, b in zip(one, two):
        assert a.ids == b.ids and a.texts == b.texts and len(a.images) == len(b.images) == 6
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
        assert [x.id for x in a.bad] == [x.id for x in b.bad] == ["l_noarea", "l_outside"]


def test_extraction_uses_as_many_processes_as_torch_has_threads(tmp_path, monkeypatch):
    """--threads 1 (torch.set_num_threads) keeps page cutting to one process too."""
    import os
    from concurrent import futures
    import torch

    paths = [write_alto(tmp_path, "p1"), write_page(tmp_path, "p2")]
    started = []
    real = futures.ProcessPoolExecutor
    monkeypatch.setattr(futures, "ProcessPoolExecutor", lambda n, **kw: started.append(n) or real(n, **kw))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    pages.read_pages(paths, height=16, cache=False)
    assert started == []  # one process: this one
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    if len(os.sched_getaffinity(0)) > 1:
        pages.read_pages(paths, height=16, cache=False)
        assert started == [2]  # one per page, within the cores allowed


def test_a_cache_variable_naming_a_file_is_refused(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path / "file"))
    write_alto(tmp_path / "pages", "p1")
    with pytest.raises(ConfigError, match=r"CONVRNN_CACHE=.*file: a file, not a folder"):
        read_lines(str(tmp_path / "pages"), height=16, workers=1)


def test_cache_hits_and_invalidation(tmp_path, monkeypatch):
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path / "cache"))
    paths = [write_alto(tmp_path / "d", "p1"), write_alto(tmp_path / "d", "p2")]
    seen = []
    first = pages.read_pages(paths, height=16, workers=1, progress=lambda d, t: seen.append((d, t)))
    assert [p.cached for p in first] == [False, False] and seen == [(1, 2), (2, 2)]
    assert len(list((tmp_path / "cache" / "pages").glob("*.npz"))) == 1  # two pages with the same bytes
    again = pages.read_pages(paths, height=16, workers=1)
    assert [p.cached for p in again] == [True, True]
    for a, b in zip(first, again):
        assert a.ids == b.ids and a.texts == b.texts and a.indices == b.indices
        assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images))
        assert [(x.id, x.kind) for x in a.bad] == [(x.id, x.kind) for x in b.bad]
    # a changed transcription, another height, a changed image: cut again
    paths[1].write_text(paths[1].read_text(encoding="utf-8").replace('CONTENT="ab"', 'CONTENT="ba"'), encoding="utf-8")
    third = pages.read_pages(paths, height=16, workers=1)
    assert [p.cached for p in third] == [True, False] and third[1].texts[0] == "ba"
    assert [p.cached for p in pages.read_pages(paths, height=20, workers=1)] == [False, False]
    _page_image(tmp_path / "d" / "page.png", seed=1)
    assert [p.cached for p in pages.read_pages(paths, height=16, workers=1)] == [False, False]
    # an unreadable cache file is cut again
    for f in (tmp_path / "cache" / "pages").glob("*.npz"):
        f.write_bytes(b"garbage")
    assert [p.cached for p in pages.read_pages(paths, height=16, workers=1)] == [False, False]


# ------------------------------------------------------------------------------------ writing

def _alto_doc(line_content: str) -> str:
    """An ALTO file with a prefixed namespace, comments and odd spacing, around one line's content."""
    return ('<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<a:alto xmlns:a="{ALTO_NS}" xmlns:x="urn:other">\n'
            '  <a:Description><a:sourceImageInformation><a:fileName>page.png</a:fileName>'
            '</a:sourceImageInformation></a:Description>\n'
            '  <a:Layout><a:Page WIDTH="480" HEIGHT="360"><a:PrintSpace><a:TextBlock ID="b">\n'
            '    <!-- keep me -->\n'
            '    <a:TextLine ID="l1"  BASELINE="20 52 300 52" HPOS="20" VPOS="20" WIDTH="280" HEIGHT="40"\n'
            '                x:note="a &gt; b">\n'
            '      <a:Shape><a:Polygon POINTS="20 20 300 20 300 60 20 60"/></a:Shape>\n'
            f'      {line_content}\n'
            '    </a:TextLine>\n'
            '    <a:TextLine ID="l2" BASELINE="20 112 300 112"/>\n'
            '    <a:TextLine ID="l3" BASELINE="20 172 300 172"><x:Extra/></a:TextLine>\n'
            '  </a:TextBlock></a:PrintSpace></a:Page></a:Layout>\n</a:alto>\n')


def test_alto_writing_changes_only_the_lines(tmp_path):
    src = tmp_path / "in.xml"
    old = ('<a:String ID="s1" CONTENT="old" HPOS="20" VPOS="21" WIDTH="50" HEIGHT="30" STYLEREFS="f1"/>'
           '<a:SP/><a:String ID="s2" CONTENT="words"><a:Glyph CONTENT="w"/></a:String>')
    src.write_text(_alto_doc(old), encoding="utf-8")
    n = pages.write_page_texts(src, tmp_path / "out.xml", {0: ('new & "<text>"', 0.5), 1: ("b", 0.25),
                                                              2: ("c", 1.0)})
    assert n == 3
    new = ('<a:String ID="s1" CONTENT="new &amp; &quot;&lt;text&gt;&quot;" HPOS="20" VPOS="20" WIDTH="280" '
           'HEIGHT="40" WC="0.5000"/>')  # one word's style (STYLEREFS) does not claim the line
    expected = _alto_doc(new).replace(
        '<a:TextLine ID="l2" BASELINE="20 112 300 112"/>',
        '<a:TextLine ID="l2" BASELINE="20 112 300 112"><a:String CONTENT="b" WC="0.2500"/></a:TextLine>').replace(
        "<x:Extra/></a:TextLine>", '<x:Extra/><a:String CONTENT="c" WC="1.0000"/></a:TextLine>')
    assert (tmp_path / "out.xml").read_text(encoding="utf-8") == expected  # every other byte as it was
    back = pages.parse_page(tmp_path / "out.xml")
    assert [ln.text for ln in back.lines] == ['new & "<text>"', "b", "c"]
    # a single String keeps its own box
    src.write_text(_alto_doc('<a:String CONTENT="x" HPOS="21" WC="0.1"/>'), encoding="utf-8")
    pages.write_page_texts(src, tmp_path / "out2.xml", {0: ("y", 0.75)})
    assert '<a:String CONTENT="y" HPOS="21" WC="0.7500"/>' in (tmp_path / "out2.xml").read_text(encoding="utf-8")


def test_page_writing_changes_only_the_lines(tmp_path):
    ns = PAGE_NS[2019]

    def doc(line1: str, line2_tail: str, region: str) -> str:
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<pc:PcGts xmlns:pc="{ns}"><pc:Page imageFilename="p.png" imageWidth="9" imageHeight="9">\n'
                '  <pc:TextRegion id="r"><pc:Coords points="0,0 9,0 9,9"/>\n'
                '    <pc:TextLine id="a">\n'
                '      <pc:Coords points="0,0 9,0 9,9"/>\n'
                f'{line1}'
                '    </pc:TextLine>\n'
                '    <pc:TextLine id="b">\n'
                '      <pc:Coords points="0,0 9,0 9,9"/>\n'
                f'{line2_tail}'
                '    </pc:TextLine>\n'
                f'{region}'
                '  </pc:TextRegion></pc:Page></pc:PcGts>\n')

    src = tmp_path / "in.xml"
    src.write_text(doc('      <pc:TextEquiv index="1" conf="0.2"><pc:PlainText>x</pc:PlainText><pc:Unicode>x'
                       '</pc:Unicode></pc:TextEquiv>\n      <pc:TextEquiv index="2"><pc:Unicode>y</pc:Unicode>'
                       '</pc:TextEquiv>\n',
                       '      <pc:TextStyle fontSize="9"/>\n',
                       '    <pc:TextEquiv><pc:Unicode>region text</pc:Unicode></pc:TextEquiv>\n'), encoding="utf-8")
    pages.write_page_texts(src, tmp_path / "out.xml", {0: ("1 < 2", 0.125), 1: ("zwei", 0.5)})
    expected = doc('      <pc:TextEquiv conf="0.1250"><pc:Unicode>1 &lt; 2</pc:Unicode></pc:TextEquiv>\n',
                   '      <pc:TextEquiv conf="0.5000"><pc:Unicode>zwei</pc:Unicode></pc:TextEquiv>\n'
                   '      <pc:TextStyle fontSize="9"/>\n', "")  # the region's text was the old lines'
    assert (tmp_path / "out.xml").read_text(encoding="utf-8") == expected
    assert [ln.text for ln in pages.parse_page(tmp_path / "out.xml").lines] == ["1 < 2", "zwei"]


def test_page_writing_sets_last_change(tmp_path, monkeypatch):
    """PAGE's Metadata/LastChange says when the file was last changed: writing texts is a change."""
    meta = ("<Metadata><Creator>Transkribus</Creator><Created>2020-01-01T00:00:00</Created>"
            "<LastChange>2020-02-02T00:00:00</LastChange></Metadata>")
    src = tmp_path / "in.xml"
    doc = (f'<?xml version="1.0" encoding="UTF-8"?>\n<PcGts xmlns="{PAGE_NS[2019]}">{meta}<Page imageFilename="p.png">'
           '<TextLine id="a"><Coords points="0,0 9,0 9,9"/></TextLine></Page></PcGts>\n')
    src.write_text(doc, encoding="utf-8")
    monkeypatch.setattr(pages, "_utc_now", lambda: "2026-12-05T10:11:12Z")
    pages.write_page_texts(src, tmp_path / "out.xml", {0: ("x", 0.5)})
    out = (tmp_path / "out.xml").read_text(encoding="utf-8")
    assert out == doc.replace("<LastChange>2020-02-02T00:00:00<", "<LastChange>2026-12-05T10:11:12Z<").replace(
        '<Coords points="0,0 9,0 9,9"/>', '<Coords points="0,0 9,0 9,9"/><TextEquiv conf="0.5000"><Unicode>x</Unicode>'
        '</TextEquiv>')
    src.write_text(doc.replace("<LastChange>2020-02-02T00:00:00</LastChange>", "<LastChange/>"), encoding="utf-8")
    pages.write_page_texts(src, tmp_path / "out2.xml", {0: ("x", 0.5)})
    assert "<LastChange>2026-12-05T10:11:12Z</LastChange>" in (tmp_path / "out2.xml").read_text(encoding="utf-8")


def test_writing_keeps_a_non_utf8_encoding(tmp_path):
    src = tmp_path / "in.xml"
    text = (f'<?xml version="1.0" encoding="ISO-8859-1"?>\n<PcGts xmlns="{PAGE_NS[2013]}"><Page imageFilename="é.png">'
            '<TextLine id="a"><Coords points="0,0 9,0 9,9"/></TextLine></Page></PcGts>\n')
    src.write_bytes(text.encode("latin-1"))
    pages.write_page_texts(src, tmp_path / "out.xml", {0: ("café ✓", 0.5)})
    out = (tmp_path / "out.xml").read_bytes()
    assert out.startswith(b'<?xml version="1.0" encoding="ISO-8859-1"?>') and "é.png".encode("latin-1") in out
    assert b"caf\xe9 &#10003;" in out
    assert pages.parse_page(tmp_path / "out.xml").lines[0].text == "café ✓"


def test_writing_drops_what_describes_the_old_text(tmp_path):
    """A written line keeps nothing that describes its old text and would contradict the new one: PAGE
    Words (with Glyphs), its region's TextEquiv, Transkribus tags at character offsets (reading order
    stays) and the page's Transkribus status (GT); ALTO character confidences (CC) and correction status
    (CS) of String, line and block."""
    src = tmp_path / "in.xml"

    def page_doc(status: str, line_a: str, line_b: str, region_text: str) -> str:
        return ('<?xml version="1.0" encoding="UTF-8" standalone="yes"?>\n'
                f'<PcGts xmlns="{PAGE_NS[2013]}"><Metadata><Creator>Transkribus</Creator>\n'
                f'  <TranskribusMetadata docId="1" pageId="2"{status} imgUrl="https://x/Get?id=A&amp;t=view"/>\n'
                '</Metadata><Page imageFilename="p.png" imageWidth="9" imageHeight="9">\n'
                '  <TextRegion id="r" custom="readingOrder {index:0;}"><Coords points="0,0 9,0 9,9"/>\n'
                f'{line_a}{line_b}{region_text}'
                '  </TextRegion>\n</Page></PcGts>\n')

    src.write_text(page_doc(
        ' status="GT"',
        '    <TextLine id="a" custom="readingOrder {index:0;} textStyle {offset:0; length:3;bold:true;} '
        'abbrev {offset:4; length:2;expansion:Herr;}">\n'
        '      <Coords points="0,0 9,0 9,9"/>\n'
        '      <Word id="w1"><Coords points="0,0 1,0 1,1"/><Glyph id="g1"><Coords points="0,0 1,0 1,1"/>'
        '<TextEquiv><Unicode>o</Unicode></TextEquiv></Glyph><TextEquiv><Unicode>old</Unicode></TextEquiv></Word>\n'
        '      <Word id="w2"><Coords points="0,0 1,0 1,1"/><TextEquiv><Unicode>Hr</Unicode></TextEquiv></Word>\n'
        '      <TextEquiv><Unicode>old Hr</Unicode></TextEquiv>\n'
        '    </TextLine>\n',
        "    <TextLine id='b' custom='abbrev {offset:0; length:2;}'><Coords points=\"0,0 9,0 9,9\"/>\n"
        '      <Word id="w3"><Coords points="0,0 1,0 1,1"/><TextEquiv><Unicode>x</Unicode></TextEquiv></Word>\n'
        '    </TextLine>\n',
        '    <TextEquiv><Unicode>old Hr\nx</Unicode></TextEquiv>\n'), encoding="utf-8")
    assert [ln.text for ln in pages.parse_page(src).lines] == ["old Hr", "x"]
    assert pages.write_page_texts(src, tmp_path / "out.xml", {0: ("new", 0.5), 1: ("y", 0.25)}) == 2
    assert (tmp_path / "out.xml").read_text(encoding="utf-8") == page_doc(
        "",
        '    <TextLine id="a" custom="readingOrder {index:0;}">\n'
        '      <Coords points="0,0 9,0 9,9"/>\n'
        '      <TextEquiv conf="0.5000"><Unicode>new</Unicode></TextEquiv>\n'
        '    </TextLine>\n',
        "    <TextLine id='b'><Coords points=\"0,0 9,0 9,9\"/>\n"
        '      <TextEquiv conf="0.2500"><Unicode>y</Unicode></TextEquiv>\n'
        '    </TextLine>\n',
        "")
    assert [ln.text for ln in pages.parse_page(tmp_path / "out.xml").lines] == ["new", "y"]

    def alto_doc(block: str, line_l: str, line_m: str) -> str:
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<alto xmlns="{ALTO_NS}"><Description><MeasurementUnit>pixel</MeasurementUnit><sourceImageInformation>'
                '<fileName>p.png</fileName></sourceImageInformation></Description>\n'
                f'<Layout><Page WIDTH="9" HEIGHT="9"><PrintSpace><TextBlock ID="b"{block}>\n'
                f'  {line_l}\n  {line_m}\n'
                '</TextBlock></PrintSpace></Page></Layout></alto>\n')

    src.write_text(alto_doc(
        ' CS="true"',
        '<TextLine ID="l" CS="true" HPOS="0" VPOS="0" WIDTH="9" HEIGHT="9"><String ID="s" CONTENT="old" WC="0.99" '
        'CC="009" CS="true" STYLE="bold"><Glyph CONTENT="o"/></String></TextLine>',
        '<TextLine ID="m" CS="false" BASELINE="0 5 9 5"/>'), encoding="utf-8")
    pages.write_page_texts(src, tmp_path / "out.xml", {0: ("new", 0.5), 1: ("y", 0.25)})
    assert (tmp_path / "out.xml").read_text(encoding="utf-8") == alto_doc(
        "",
        '<TextLine ID="l" HPOS="0" VPOS="0" WIDTH="9" HEIGHT="9"><String ID="s" CONTENT="new" WC="0.5000" '
        'STYLE="bold"/></TextLine>',
        '<TextLine ID="m" BASELINE="0 5 9 5"><String CONTENT="y" WC="0.2500"/></TextLine>')




def test_writing_a_line_of_several_words_keeps_no_words_attributes_or_references(tmp_path):
    """An ALTO line of several Strings becomes one String: it keeps the first ID (reading-order
    references to the others point to it, or go where that would repeat one) and the line's box, or
    the words' union where the line has none; no word's style or tags, which would now claim the whole
    line. The page's confidence (PC), of the old reading, goes."""
    def alto_doc(line_l: str, line_m: str, order: str) -> str:
        return ('<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<alto xmlns="{ALTO_NS}"><Description><MeasurementUnit>pixel</MeasurementUnit><sourceImageInformation>'
                '<fileName>p.png</fileName></sourceImageInformation></Description>\n'
                f'<ReadingOrder><OrderedGroup ID="o">{order}</OrderedGroup></ReadingOrder>\n'
                '<Layout><Page WIDTH="99" HEIGHT="99"{pc}><PrintSpace><TextBlock ID="b">\n'
                f'  {line_l}\n  {line_m}\n'
                '</TextBlock></PrintSpace></Page></Layout></alto>\n')

    src = tmp_path / "in.xml"
    src.write_text(alto_doc(
        '<TextLine ID="l" HPOS="0" VPOS="0" WIDTH="90" HEIGHT="9"><String ID="s1" CONTENT="Old" HPOS="0" VPOS="0" '
        'WIDTH="20" HEIGHT="9" STYLE="bold" TAGREFS="NE1"/><SP ID="sp1"/><String ID="s2" CONTENT="wor" HPOS="30" '
        'VPOS="0" WIDTH="20" HEIGHT="9"/><HYP CONTENT="-"/></TextLine>',
        '<TextLine ID="m" BASELINE="0 25 90 25"><String CONTENT="a" HPOS="5" VPOS="20" WIDTH="10" HEIGHT="8"/>'
        '<SP/><String ID="s4" CONTENT="b" HPOS="40" VPOS="18" WIDTH="10.5" HEIGHT="9"/></TextLine>',
        '<ElementRef ID="e1" REF="s1"/><ElementRef ID="e2" REF="s2"/><ElementRef ID="e4" REF="s4"/>'
        '<ElementRef ID="eb" REF="b"/>').replace("{pc}", ' PC="0.97"'), encoding="utf-8")
    pages.write_page_texts(src, tmp_path / "out.xml", {0: ("new text", 0.5), 1: ("y z", 0.25)})
    assert (tmp_path / "out.xml").read_text(encoding="utf-8") == alto_doc(
        '<TextLine ID="l" HPOS="0" VPOS="0" WIDTH="90" HEIGHT="9"><String ID="s1" CONTENT="new text" HPOS="0" '
        'VPOS="0" WIDTH="90" HEIGHT="9" WC="0.5000"/></TextLine>',
        '<TextLine ID="m" BASELINE="0 25 90 25"><String ID="s4" CONTENT="y z" HPOS="5" VPOS="18" WIDTH="45.5" '
        'HEIGHT="10" WC="0.2500"/></TextLine>',
        '<ElementRef ID="e1" REF="s1"/><ElementRef ID="e4" REF="s4"/><ElementRef ID="eb" REF="b"/>').replace("{pc}", "")
    assert [ln.text for ln in pages.parse_page(tmp_path / "out.xml").lines] == ["new text", "y z"]


def test_writing_every_line_leaves_no_region_text_of_the_input(tmp_path):
    """With every line of a PAGE file written (as predict --out writes them), a region without lines loses
    its TextEquiv too: the copy's texts are all the model's. Writing some lines keeps other regions' texts."""
    src = write_page(tmp_path, "p", lines={"l_straight": LINES["l_straight"]})
    doc = src.read_text(encoding="utf-8").replace(
        "\n  </Page>", '\n    <TextRegion id="r2"><Coords points="0,0 9,0 9,9"/>'
        "<TextEquiv><Unicode>region text</Unicode></TextEquiv></TextRegion>\n  </Page>")
    src.write_text(doc, encoding="utf-8")
    pages.write_page_texts(src, tmp_path / "all.xml", {}, others=("new", 0.5))
    assert "region text" not in (tmp_path / "all.xml").read_text(encoding="utf-8")
    assert '<TextRegion id="r2"><Coords points="0,0 9,0 9,9"/></TextRegion>' in (tmp_path / "all.xml").read_text(
        encoding="utf-8")
    write_page(tmp_path, "q", lines={"l_straight": LINES["l_straight"], "l_band": LINES["l_band"]})
    (tmp_path / "q.xml").write_text((tmp_path / "q.xml").read_text(encoding="utf-8").replace(
        "\n  </Page>", '\n    <TextRegion id="r2"><Coords points="0,0 9,0 9,9"/>'
        "<TextEquiv><Unicode>region text</Unicode></TextEquiv></TextRegion>\n  </Page>"), encoding="utf-8")
    pages.write_page_texts(tmp_path / "q.xml", tmp_path / "some.xml", {0: ("new", 0.5)})
    assert "region text" in (tmp_path / "some.xml").read_text(encoding="utf-8")

@pytest.mark.parametrize("variant", ["no namespace", "unknown namespace", "BOM", "latin-1", "UTF-16"])
def test_alto_variants_are_read_and_written(tmp_path, variant):
    """ALTO as tools write it beyond the v4 schema's letter: no namespace (old exports), a namespace of an
    ALTO version this code does not know (CCS's v1, a later v5), a UTF-8 byte order mark, another
    declared encoding; read alike, and written back in the file's own encoding."""
    doc = ('<?xml version="1.0" encoding="UTF-8"?>\n<alto><Description><MeasurementUnit>pixel</MeasurementUnit>'
           "<sourceImageInformation><fileName>p.png</fileName></sourceImageInformation></Description>\n"
           '<Layout><Page WIDTH="9" HEIGHT="9"><PrintSpace><TextBlock><TextLine ID="l" BASELINE="0,5 9,5">'
           '<String CONTENT="Ré"/><SP/><String CONTENT="su"/><HYP CONTENT="-"/></TextLine>'
           "</TextBlock></PrintSpace></Page></Layout></alto>\n")
    data = {"no namespace": doc.encode(),
            "unknown namespace": doc.replace("<alto>", '<alto xmlns="http://schema.ccs-gmbh.com/ALTO">').encode(),
            "BOM": b"\xef\xbb\xbf" + doc.encode(),
            "latin-1": doc.replace("UTF-8", "ISO-8859-1").encode("latin-1"),
            "UTF-16": doc.replace("UTF-8", "UTF-16").encode("utf-16")}[variant]
    src = tmp_path / "in.xml"
    src.write_bytes(data)
    page = pages.parse_page(src)
    assert page.kind == pages.ALTO and page.image_name == "p.png"
    assert [(ln.id, ln.text, ln.baseline.tolist()) for ln in page.lines] == [("l", "Ré  su-", [[0, 5], [9, 5]])]
    pages.write_page_texts(src, tmp_path / "out.xml", {0: ("né ✓", 0.5)})
    out = (tmp_path / "out.xml").read_bytes()
    assert out[:3] == data[:3]  # declaration, BOM, encoding as they were
    assert pages.parse_page(tmp_path / "out.xml").lines[0].text == "né ✓"


@pytest.mark.parametrize("kind", ["alto", "page"])
def test_writing_refuses_a_confidence_outside_0_1(tmp_path, kind):
    """WC and @conf are 0..1: a NaN (a broken model) would be written as "nan", which no schema allows and
    which no reader should take for a score; the file is not written."""
    src = (write_alto if kind == "alto" else write_page)(tmp_path, lines={"l_straight": LINES["l_straight"]})
    message = f"{src}:l_straight: cannot write its text (confidence nan outside 0..1)"
    with pytest.raises(DataError, match=re.escape(message)):
        pages.write_page_texts(src, tmp_path / "out" / "nan.xml", {0: ("x", float("nan"))})
    assert not (tmp_path / "out" / "nan.xml").exists()
    pages.write_page_texts(src, tmp_path / "out" / "ok.xml", {0: ("x", 1.0000001)})  # rounding above 1 is 1
    written = (tmp_path / "out" / "ok.xml").read_text(encoding="utf-8")
    assert ('WC="1.0000"' if kind == "alto" else 'conf="1.0000"') in written

# ------------------------------------------------------------------------------------ the CLI


@pytest.fixture(scope="module")
def page_run(tmp_path_factory):
    """A tiny lines run trained (a few steps) on an ALTO page."""
    base = tmp_path_factory.mktemp("pagexml")
    write_alto(base / "train", "p1")
    run = base / "run"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "lines", "--data", str(base / "train" / "*.xml"), "--val", str(base / "train"),
              "--height", "16", "--max-steps", "2", "--batch-size", "4", "--run-dir", str(run),
              "--spec", "conv:4,3x3 pool:2x2 cols lstm:8,bi ctc"])
    assert exc.value.code == 0
    return run


def test_cli_predict_writes_pages_read_back(page_run, capsys, tmp_path):
    alto = write_alto(tmp_path / "in", "scan_alto")
    page = write_page(tmp_path / "in", "scan_page")
    code, out, err = run_cli(capsys, "predict", str(page_run), str(alto), str(page))
    assert code == 0, err
    rows = [r.split("\t") for r in out.rstrip("\n").split("\n")]
    ids = ["l_straight", "l_band", "l_rtl", "l_vertical", "l_float", "l_notext"]  # text or not
    assert [r[0] for r in rows] == [f"{alto}:{k}" for k in ids] + [f"{page}:{k}" for k in ids]
    predicted = {r[0]: r[1] for r in rows}
    assert "l_noarea" in err and "l_outside" in err  # named, not fatal
    assert "reading lines: 12/12 lines" in err  # progress on stderr, the texts alone on stdout
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                             "--beam", "3")
    assert code == 0, err
    assert out.split("\n")[:2] == [
        f"wrote {tmp_path / 'out' / 'scan_alto.xml'} (6 lines; 2 not read, written without text)",
        f"wrote {tmp_path / 'out' / 'scan_page.xml'} (6 lines; 2 not read, written without text)"]
    for src in (alto, page):
        back = pages.parse_page(tmp_path / "out" / src.name)
        texts = {ln.id: ln.text for ln in back.lines}
        for k in ids:  # the beam's texts may differ from greedy ones only where it finds better
            assert texts[k] is not None
        # lines not read do not keep the input's text, which would pass for a reading
        assert texts["l_noarea"] == "" and texts["l_outside"] == ""
        assert back.kind == pages.parse_page(src).kind
    # greedy decoding writes exactly what predict prints
    run_cli(capsys, "predict", str(page_run), str(alto), "--out", str(tmp_path / "greedy"))
    back = pages.parse_page(tmp_path / "greedy" / alto.name)
    assert {f"{alto}:{ln.id}": ln.text for ln in back.lines if ln.id in ids} == \
        {k: v for k, v in predicted.items() if k.startswith(str(alto))}
    root = ET.parse(tmp_path / "greedy" / alto.name).getroot()
    confs = [float(s.get("WC")) for s in root.iter(f"{{{ALTO_NS}}}String") if s.get("WC")]
    assert len(confs) == 8 and all(0.0 <= c <= 1.0 for c in confs)  # the 2 lines not read: 0
    # the output folder may not be the input's own
    code, out, err = run_cli(capsys, "predict", str(page_run), str(alto), "--out", str(tmp_path / "in"))
    assert code == 2 and "refusing to overwrite the input file" in err and err.count("\n") == 1


def test_cli_predict_passes_over_an_exports_mets_file(page_run, capsys, tmp_path):
    """An unpacked eScriptorium or Transkribus export holds a METS file beside the pages: predict reads
    the pages, in the folder or by a pattern, and passes over the METS file as training does."""
    write_alto(tmp_path / "export", "p1", lines={"l_straight": LINES["l_straight"]})
    (tmp_path / "export" / "METS.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<mets:mets xmlns:mets="http://www.loc.gov/METS/"/>\n',
        encoding="utf-8")
    for given in (tmp_path / "export", f"{tmp_path / 'export'}/*.xml"):
        code, out, err = run_cli(capsys, "predict", str(page_run), str(given))
        assert code == 0 and out.startswith(f"{tmp_path / 'export' / 'p1.xml'}:l_straight\t"), err
        code, out, err = run_cli(capsys, "predict", str(page_run), str(given), "--out", str(tmp_path / "out"))
        assert code == 0 and out == f"wrote {tmp_path / 'out' / 'p1.xml'} (1 line)\n", err
        assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["p1.xml"]
    # given alone, it is not a page: one error line
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "export" / "METS.xml"))
    assert code == 2 and "not ALTO or PAGE XML" in err and err.count("error: ") == 1, err


def test_a_run_decodes_word_lists_in_its_normal_form(page_run):
    """The run's data.normalize is kept with the model, so that --lexicon and --lm files are put in it."""
    from convrnn.infer.run import load_run
    assert load_run(str(page_run)).task.normalize == "NFC"


def test_cli_predict_names_lines_sharing_an_id_apart(page_run, capsys, tmp_path):
    """Two lines of one page with one id: predict's output names each once, in file order, so that a
    script joining texts to lines by name does not give both lines one text."""
    lines = {"l_straight": LINES["l_straight"], "l_band": LINES["l_band"]}
    alto = write_alto(tmp_path, "twice", lines=lines)
    alto.write_text(alto.read_text(encoding="utf-8").replace('ID="l_band"', 'ID="l_straight"'), encoding="utf-8")
    code, out, err = run_cli(capsys, "predict", str(page_run), str(alto))
    assert code == 0, err
    assert [r.split("\t")[0] for r in out.rstrip("\n").split("\n")] == [f"{alto}:l_straight", f"{alto}:l_straight#2"]


def test_cli_predict_reads_the_pages_it_can_and_ends_with_an_error_for_the_others(page_run, capsys, tmp_path):
    """A batch with a page whose image is missing: the other pages are read and written, and the
    command ends with one error line and exit 2, so that a script sees that a page is missing."""
    good = write_alto(tmp_path / "in", "good", image="good.png")
    lost = write_alto(tmp_path / "in", "lost", image="lost.png", make_image=False)
    for extra in ([], ["--out", str(tmp_path / "out")]):
        code, out, err = run_cli(capsys, "predict", str(page_run), str(good), str(lost), *extra)
        assert code == 2, err
        assert out.startswith(f"wrote {tmp_path / 'out' / 'good.xml'} (" if extra else f"{good}:l_straight\t")
        assert str(lost) not in out
        last = err.strip().splitlines()[-1]
        assert last.startswith("error: 1 of 2 pages could not be read") and "lost.png" in last, err
        assert err.count("error: ") == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.xml"]


def test_cli_predict_writes_the_other_pages_when_one_cannot_be_rewritten(page_run, capsys, tmp_path):
    """A page the reader takes but the writer cannot rewrite (a line's children out of the schema's
    order) is named at the end with exit 2; the pages after it are still written."""
    odd = write_page(tmp_path / "in", "a_odd", lines={"l_straight": LINES["l_straight"]})
    odd.write_text(odd.read_text(encoding="utf-8").replace(
        "<TextEquiv><Unicode>ab</Unicode></TextEquiv>",
        '<TextEquiv index="0"><Unicode>ab</Unicode></TextEquiv><Word id="w"><Coords points="1,1 2,1 2,2"/></Word>'
        '<TextEquiv index="1"><Unicode>ab</Unicode></TextEquiv>'), encoding="utf-8")
    write_alto(tmp_path / "in", "b_good", lines={"l_straight": LINES["l_straight"]})
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert code == 2, err
    assert out == f"wrote {tmp_path / 'out' / 'b_good.xml'} (1 line)\n"
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: 1 of 2 pages could not be read or written") and "a_odd.xml" in last, err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b_good.xml"]

def test_cli_predict_of_one_unreadable_page_names_it_once(page_run, capsys, tmp_path):
    lost = write_alto(tmp_path, "lost", image="lost.png", make_image=False)
    code, out, err = run_cli(capsys, "predict", str(page_run), str(lost))
    assert code == 2 and out == "", err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: {lost}: page image 'lost.png' not found") and last.count(str(lost)) == 1, err
    assert last.endswith("; no lines to recognise")

def test_cli_predict_of_a_blank_page_writes_it_as_is(page_run, capsys, tmp_path):
    """A page with no text lines (a cover, the back of a leaf) is no error, alone or among others: a
    per-page script goes on, and the set written back has every page."""
    blank = write_alto(tmp_path / "in", "blank", lines={})
    code, out, err = run_cli(capsys, "predict", str(page_run), str(blank), "--out", str(tmp_path / "out"))
    assert code == 0 and out == f"wrote {tmp_path / 'out' / 'blank.xml'} (0 lines)\n", err
    assert f"{blank}: no text lines on this page" in err
    assert (tmp_path / "out" / "blank.xml").read_bytes() == blank.read_bytes()
    code, out, err = run_cli(capsys, "predict", str(page_run), str(blank))
    assert code == 0 and out == "" and "no text lines on this page" in err


def test_cli_predict_of_a_blank_page_keeps_its_region_text(page_run, capsys, tmp_path):
    """A page without lines whose region carries a transcription of its own: nothing is read, so the
    copy is the input byte for byte, region text included."""
    cover = write_page(tmp_path / "in", "cover", lines={})
    cover.write_text(cover.read_text(encoding="utf-8").replace(
        '<TextRegion id="r1">', '<TextRegion id="r1"><TextEquiv><Unicode>title page</Unicode></TextEquiv>'),
        encoding="utf-8")
    code, out, err = run_cli(capsys, "predict", str(page_run), str(cover), "--out", str(tmp_path / "out"))
    assert code == 0 and out == f"wrote {tmp_path / 'out' / 'cover.xml'} (0 lines)\n", err
    assert (tmp_path / "out" / "cover.xml").read_bytes() == cover.read_bytes()


def test_cli_predict_keeps_exports_apart_and_passes_over_their_mets_files(page_run, capsys, tmp_path):
    """Two eScriptorium exports, each with its METS.xml, predicted together: the METS files are never
    written, so they do not collide; pages of the same name in two documents matched by one pattern
    are written below --out at their paths under the pattern's folder."""
    mets = '<?xml version="1.0" encoding="UTF-8"?>\n<mets:mets xmlns:mets="http://www.loc.gov/METS/"/>\n'
    for name in ("a", "b"):
        write_alto(tmp_path / name, f"p_{name}", lines={"l_straight": LINES["l_straight"]})
        (tmp_path / name / "METS.xml").write_text(mets, encoding="utf-8")
    for _ in range(2):  # again into the same --out: its files are outputs, not inputs
        code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "a"), str(tmp_path / "b"),
                                 "--out", str(tmp_path / "out"))
        assert code == 0, err
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == ["p_a.xml", "p_b.xml"]
    for doc in ("DocA", "DocB"):  # a Transkribus export: document folders, each with page/0001.xml
        write_page(tmp_path / "tk" / doc / "page", "0001", image="../0001.png", lines={"l_straight": LINES["l_straight"]})
        _page_image(tmp_path / "tk" / doc / "0001.png")
        (tmp_path / "tk" / doc / "mets.xml").write_text(mets, encoding="utf-8")
    code, out, err = run_cli(capsys, "predict", str(page_run), f"{tmp_path / 'tk'}/**/*.xml",
                             "--out", str(tmp_path / "tk_out"))
    assert code == 0, err
    assert out.splitlines() == [f"wrote {tmp_path / 'tk_out' / doc / 'page' / '0001.xml'} (1 line)"
                                for doc in ("DocA", "DocB")]
    # a document folder (METS and metadata beside page/) is named with the folder that holds its pages
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "tk" / "DocA"))
    assert code == 2 and f"some in {tmp_path / 'tk' / 'DocA' / 'page'}; give that folder" in err, err
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "tk"))
    assert code == 2 and f"some in {tmp_path / 'tk' / 'DocA' / 'page'} and 1 other subfolder" in err, err
    # only METS files: an error, not a run that reads nothing
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "a" / "METS.xml"),
                             str(tmp_path / "b" / "METS.xml"))
    assert code == 2 and "no ALTO or PAGE XML among these 2 XML files" in err, err


def test_cli_predict_out_that_cannot_be_written_is_refused_before_reading(page_run, capsys, tmp_path, monkeypatch):
    """A page's destination that cannot be written (a folder in its place) stops predict before any
    line is read; a write that fails later (a full disk) loses that page only."""
    from convrnn.recipes import lines as lines_module

    first = write_alto(tmp_path / "in", "p1", lines={"l_straight": LINES["l_straight"]})
    write_alto(tmp_path / "in", "p2", lines={"l_straight": LINES["l_straight"]})
    (tmp_path / "out" / "p2.xml").mkdir(parents=True)
    read = []
    monkeypatch.setattr(lines_module, "recognise", lambda *a, **k: read.append(1) or ([], []))
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert code == 2 and "p2.xml: cannot write" in err and not read and out == "", err
    monkeypatch.undo()
    (tmp_path / "out" / "p2.xml").rmdir()
    real = lines_module.write_page_texts

    def full_disk(src, dst, *args, **kwargs):
        if Path(src) == first:
            raise OSError(28, "No space left on device")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(lines_module, "write_page_texts", full_disk)
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "in"), "--out", str(tmp_path / "out"))
    assert code == 2 and out == f"wrote {tmp_path / 'out' / 'p2.xml'} (1 line)\n", err
    assert "1 of 2 pages could not be read or written" in err and "No space left" in err


def test_a_scan_stored_upside_down_by_exif_is_read_as_stored_with_a_warning(tmp_path, caplog):
    """A half turn keeps the page's size, so nothing tells whether the XML was drawn on the pixels as
    stored or as shown: the scan is read as stored, and a warning names the page and the way out."""
    folder = tmp_path / "b"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 3
    _page_image(tmp_path / "page.png")
    Image.open(tmp_path / "page.png").save(folder / "page.jpg", exif=exif, quality=95)
    xml = write_alto(folder, "p", image="page.jpg")
    got = pages.extract_page(xml, 16)
    assert got.page_error is None and len(got.notes) == 1
    assert "stored turned 180°" in got.notes[0] and "EXIF orientation 3" in got.notes[0]
    with caplog.at_level(logging.WARNING):
        pages.collect_lines([got], [str(xml)])
    assert "EXIF orientation 3" in caplog.text
    plain = write_alto(tmp_path / "c", "p")
    assert pages.extract_page(plain, 16).notes == []


def test_cli_plot_ctc_draws_a_line_of_a_page_named_as_predict_names_it(page_run, capsys, tmp_path):
    page = write_alto(tmp_path / "in", "p1", lines={"l_straight": LINES["l_straight"]})
    code, out, err = run_cli(capsys, "predict", str(page_run), str(page))
    assert code == 0, err
    name, text = out.strip().split("\t")
    assert name == f"{page}:l_straight"
    code, out, err = run_cli(capsys, "plot", "ctc", str(page_run), name, "--out", str(tmp_path / "l.png"))
    assert code == 0 and out.startswith(f"wrote {tmp_path / 'l.png'} (") and f"text {text!r}" in out, err
    assert Image.open(tmp_path / "l.png").size[0] > 100
    for given, words in [(f"{page}:nope", "no line 'nope' on this page; its lines: l_straight"),
                         (str(page), "a page; plot ctc draws one of its lines: give"),
                         (f"{tmp_path / 'gone.xml'}:l1", "gone.xml: no such page XML file")]:
        code, out, err = run_cli(capsys, "plot", "ctc", str(page_run), given, "--out", str(tmp_path / "x.png"))
        assert code == 2 and words in err and err.count("\n") == 1, err


def test_cli_predict_reads_a_page_given_twice_once(page_run, capsys, tmp_path):
    alto = write_alto(tmp_path / "in", "p", lines={"l_straight": LINES["l_straight"]})
    again = tmp_path / "in" / ".." / "in" / "p.xml"
    code, out, err = run_cli(capsys, "predict", str(page_run), str(alto), str(again))
    assert code == 0 and out.count("\n") == 1, (out, err)
    assert f"1 page given more than once, read once: {again} (also {alto})" in err
    code, out, err = run_cli(capsys, "predict", str(page_run), str(alto), f"{tmp_path / 'in'}/*.xml",
                             "--out", str(tmp_path / "out"))
    assert code == 0 and out == f"wrote {tmp_path / 'out' / 'p.xml'} (1 line)\n", err


def test_cli_one_unreadable_page_is_one_line_in_training_and_predict(page_run, capsys, tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<alto><Layout>", encoding="utf-8")
    write_alto(tmp_path / "train", "p1", lines={"l_straight": LINES["l_straight"]})
    code, out, err = run_cli(capsys, "train", "lines", "--data", str(tmp_path / "train"), "--val", str(broken),
                             "--height", "16", "--max-steps", "1", "--run-dir", str(tmp_path / "run"))
    told = [ln for ln in err.splitlines() if not ln.startswith("preparing")]  # progress aside
    assert code == 2 and len(told) == 1, err
    assert told[0].startswith(f"error: {broken}: XML does not parse") and told[0].endswith("no transcribed lines left to use")
    code, out, err = run_cli(capsys, "predict", str(page_run), str(broken))
    assert code == 2 and err.count("\n") == 1 and "XML does not parse" in err, err


def test_cli_refuses_empty_inputs_rather_than_reading_the_working_folder(page_run, capsys, tmp_path, monkeypatch):
    """An unset shell variable gives an empty argument: as a path it names the working folder, whose
    pages would be read in place of the ones meant; as --set data.test= it would score the run's own."""
    write_alto(tmp_path, "here")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "predict", str(page_run), "")
    assert code == 2 and out == "" and err == "error: '': an empty path as input 1 of 1 (an unset shell variable?)\n"
    for key in ("data.val", "data.test"):
        code, out, err = run_cli(capsys, "eval", str(page_run), "--set", f"{key}=")
        assert code == 2 and out == "" and err.count("\n") == 1 and f"--set {key}=: empty value" in err, err


def test_cli_eval_warns_of_pages_it_scores_that_the_run_trained_on(page_run, capsys):
    code, out, err = run_cli(capsys, "eval", str(page_run), "--set", f"data.val={page_run.parent / 'train'}")
    assert code == 0, err
    assert "data.val and the run's training data share 1 of their files (p1.xml)" in err


def test_cli_names_a_folder_of_scans_without_transcriptions_or_xml(page_run, capsys, tmp_path):
    """Page scans exported without their XML are not line images waiting for transcriptions named one
    by one: one line says what the folder lacks."""
    scans = tmp_path / "scans"
    scans.mkdir()
    _page_image(scans / "scan.jpg")
    code, out, err = run_cli(capsys, "train", "lines", "--data", str(scans), "--max-steps", "1",
                             "--run-dir", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1 and not (tmp_path / "run").exists()
    assert f"{scans}: 1 image and no transcription (name.gt.txt beside name.png) or page XML" in err


def test_cli_names_an_image_given_as_a_decoding_file(page_run, capsys, tmp_path):
    _page_image(tmp_path / "scan.png")
    for option in ("--lm", "--lexicon"):
        code, out, err = run_cli(capsys, "eval", str(page_run), option, str(tmp_path / "scan.png"))
        assert code == 2 and err == f"error: {option} {tmp_path / 'scan.png'}: an image, where a text file is expected\n"


def test_cli_predict_refuses_page_images_and_out_without_pages(page_run, capsys, tmp_path):
    """A page scan read as one line gives a meaningless text: with its XML beside it, it is refused;
    --out writes page XML, so inputs with none are refused rather than writing nothing."""
    alto = write_alto(tmp_path / "export", "scan", image="scan.png")
    code, out, err = run_cli(capsys, "predict", str(page_run), str(alto), str(tmp_path / "export" / "scan.png"))
    assert code == 2 and err.count("\n") == 1 and out == ""
    assert f"{tmp_path / 'export' / 'scan.png'}: a page image, whose page XML is {alto}" in err
    image = tmp_path / "line.png"
    shutil.copy(tmp_path / "export" / "scan.png", image)  # the same pixels with no XML beside: a line image
    code, out, err = run_cli(capsys, "predict", str(page_run), str(image), "--out", str(tmp_path / "out"))
    assert code == 2 and "--out" in err and "writes page XML files, and no input is one" in err
    assert not (tmp_path / "out").exists()
    code, out, err = run_cli(capsys, "predict", str(page_run), str(image))
    assert code == 0 and out.startswith(f"{image}\t")


def test_cli_eval_on_pages(page_run, capsys, tmp_path):
    folder = tmp_path / "val"
    write_page(folder, "v")
    code, out, err = run_cli(capsys, "eval", str(page_run), "--set", f"data.val={folder}")
    assert code == 0, err
    assert "cer:" in out and "decoding:" not in out  # greedy, as every score unless said
    code, out, err = run_cli(capsys, "eval", str(page_run), "--set", f"data.val={folder}", "--beam", "3")
    assert code == 0 and out.splitlines()[2] == "decoding: beam 3", out


def test_cli_names_where_the_page_xml_is_and_warns_of_page_sized_images(page_run, capsys, tmp_path):
    """A Transkribus export keeps its page XML in page/ beside the scans: given the folder, predict and
    eval say where the XML is instead of reading each scan as one text line; a scan given as eval data
    is named as an image; an image taller than wide is read with a warning."""
    export = tmp_path / "export"
    write_page(export / "page", "scan", image="../scan.png")
    Image.new("L", (60, 90), 255).save(export / "scan.png")
    for argv in (["predict", str(page_run), str(export)], ["eval", str(page_run), "--set", f"data.val={export}"]):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and err.count("\n") == 1, err
        assert f"{export}: no page XML in this folder, and some in {export / 'page'}; give that folder" in err
    code, out, err = run_cli(capsys, "eval", str(page_run), "--set", f"data.val={export / 'scan.png'}")
    assert code == 2 and f"{export / 'scan.png'}: an image file, where lines are read from" in err, err
    tall = Image.new("L", (60, 90), PAPER)
    ImageDraw.Draw(tall).rectangle((10, 30, 50, 60), fill=INK)
    tall.save(tmp_path / "tall.png")
    code, out, err = run_cli(capsys, "predict", str(page_run), str(tmp_path / "tall.png"))
    assert code == 0 and out.startswith(f"{tmp_path / 'tall.png'}\t"), err
    assert "tall.png: taller than wide (60x90 pixels), read as one text line" in err


def test_cli_eval_needs_only_the_split_it_reads(page_run, capsys, tmp_path):
    """A run taken to another machine, its training pages left behind, still evaluates on pages given
    there; the split read is the one named, and a missing one is one line naming it."""
    folder = tmp_path / "test"
    write_page(folder, "t")
    moved = ["--set", f"data.data={tmp_path / 'moved' / '*.xml'}"]
    code, out, err = run_cli(capsys, "eval", str(page_run), *moved, "--set", f"data.val={folder}")
    assert code == 0, err
    assert "cer:" in out and "lines: 5 val lines" in err
    code, out, err = run_cli(capsys, "eval", str(page_run), *moved, "--split", "test", "--set", f"data.test={folder}")
    assert code == 0, err
    assert "cer:" in out and "lines: 5 test lines" in err
    # test pages given without --split are the ones scored; given beside another --split, refused
    code, out, err = run_cli(capsys, "eval", str(page_run), *moved, "--set", f"data.test={folder}")
    assert code == 0, err
    assert "split: test" in out and "lines: 5 test lines" in err
    code, out, err = run_cli(capsys, "eval", str(page_run), "--split", "val", "--set", f"data.test={folder}")
    assert code == 2 and err.count("\n") == 1
    assert f"--set data.test={folder}: scoring the val split does not read the test data; add --split test" in err
    code, out, err = run_cli(capsys, "eval", str(page_run), "--split", "test")
    assert code == 2 and "this run's data has no test split" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "eval", str(page_run), "--set", f"data.val={tmp_path / 'missing'}")
    assert code == 2 and f"{tmp_path / 'missing'}: no such folder" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "eval", str(page_run), "--set", f"data.val={folder}", "--set", "data.height=24")
    assert code == 2 and "height 24 where the checkpoint has 16" in err and err.count("\n") == 1


# Reads pages with kraken's own parser and prints {path: {line id: text}}; kraken leaves out lines
# without a baseline.
_KRAKEN_READ = """
import json, sys
from kraken.lib.xml import XMLPage
print(json.dumps({p: {ln.id: ln.text for ln in XMLPage(p).lines.values()} for p in sys.argv[1:]}))
"""


def kraken_read(paths: list) -> dict:
    """What kraken's XML parser reads from ``paths``: in this process when kraken is installed here,
    else with the Python of the kraken environment the benchmarks make (``bench.copiste.kraken_venv``:
    kraken pulls a CUDA torch, so it never goes into the project's environment); the test is skipped
    where neither is on this machine."""
    try:
        import kraken.lib.xml  # noqa: F401
        python = sys.executable
    except ImportError:
        sys.path.insert(0, str(ROOT))
        from bench.copiste import kraken_venv
        python = kraken_venv() / "bin" / "python"
        if not python.exists():
            pytest.skip(f"kraken is neither installed here nor in {kraken_venv()} (python -m bench "
                        "lines_copiste_vs_kraken makes it)")
    out = subprocess.run([str(python), "-c", _KRAKEN_READ, *map(str, paths)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout)


def test_kraken_reads_what_is_written(tmp_path):
    """kraken reads the same lines from a written page as from its source, each with the written text
    (kraken itself leaves out lines without a baseline, and in PAGE the float and negative points,
    which PAGE's schema does not allow)."""
    sources, written = [], []
    for src in (write_alto(tmp_path / "in", "a"), write_page(tmp_path / "in", "p"),
                write_page(tmp_path / "in", "p2013", version=2013)):
        texts = {k: (f"line {k} ü", 0.5) for k in range(len(LINES))}
        pages.write_page_texts(src, tmp_path / "out" / src.name, texts)
        sources.append(src)
        written.append(tmp_path / "out" / src.name)
    read = kraken_read(sources + written)
    position = {line_id: k for k, line_id in enumerate(LINES)}
    for src, dst in zip(sources, written):
        before, after = read[str(src)], read[str(dst)]
        assert len(before) >= 5 and set(after) == set(before), dst
        assert after == {line_id: f"line {position[line_id]} ü" for line_id in before}, dst
        assert before["l_straight"] == "ab"


# ------------------------------------------------------------------------------------ real pages

COPISTE = SHARED_DATA / "copiste"


@pytest.mark.skipif(not COPISTE.is_dir(), reason="the Copiste pages are not on this machine")
def test_real_escriptorium_pages(tmp_path):
    xml = sorted((COPISTE / "val").glob("*.xml"))[0]
    root = ET.parse(xml).getroot()
    expected = [ln.get("ID") for ln in root.iter(f"{{{ALTO_NS}}}TextLine")
                if " ".join((ln.find(f"{{{ALTO_NS}}}String").get("CONTENT") or "").split())]
    lines = read_lines(str(xml), height=32, workers=1)
    assert lines.names == [f"{xml.name}:{k}" for k in expected]
    assert all(im.shape[0] == 32 and im.shape[1] > 64 for im in lines.images)
    assert all(text == unicodedata.normalize("NFC", text) for text in lines.texts)


def test_cli_train_checks_every_path_before_cutting_pages(tmp_path, capsys, monkeypatch):
    """A typo in --test stops the run before the training pages are cut (minutes on a real set); val
    pages that are also training pages are named in a warning."""
    monkeypatch.setenv("CONVRNN_CACHE", str(tmp_path / "cache"))
    write_alto(tmp_path / "train", "p1")
    typo = tmp_path / "tset"
    code, out, err = run_cli(capsys, "train", "lines", "--data", str(tmp_path / "train"), "--test", str(typo),
                             "--height", "16", "--max-steps", "1", "--run-dir", str(tmp_path / "run"))
    assert code == 2 and f"{typo}: no such folder or manifest" in err and err.count("\n") == 1
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--data", str(tmp_path / "train" / "*.xml"),
                             "--val", str(tmp_path / "train"), "--height", "16", "--max-steps", "1", "--max-time", "0",
                             "--batch-size", "4", "--spec", "conv:4,3x3 pool:2x2 cols lstm:8,bi ctc",
                             "--run-dir", str(tmp_path / "run"))
    assert code == 0, err
    assert "--val and --data share 1 of their files (p1.xml)" in err
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "run"), "--set", f"data.val={tmp_path / 'gone'}")
    assert code == 2 and err.count("\n") == 1  # the user's own path is named, without a hint to give it
    assert f"{tmp_path / 'gone'}: no such folder or manifest" in err and "--set" not in err
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "run"), "--set", f"data.val={tmp_path / 'gone' / '*.xml'}")
    assert code == 2 and "the pattern matches no .xml files" in err and "--set" not in err
    (tmp_path / "train").rename(tmp_path / "moved")  # the run's own pages moved: say how to give them
    code, out, err = run_cli(capsys, "eval", str(tmp_path / "run"))
    assert code == 2 and err.count("\n") == 1
    assert f"{tmp_path / 'train'}: no such folder" in err and "give this run's val data with --set data.val=PATH" in err


def test_cli_eval_refuses_another_unicode_form_than_the_runs(page_run, capsys):
    """References put in another form than the model reads in would count its every accent an error."""
    code, out, err = run_cli(capsys, "eval", str(page_run), "--set", "data.normalize=NFD")
    assert code == 2 and out == "" and err == ("error: --set data.normalize=NFD: this run was trained on texts in "
                                               "Unicode form NFC, and reads in that form; leave the setting out to "
                                               "score it in its own\n")


def test_cli_resume_refuses_another_model_or_height_before_cutting_pages(page_run, capsys, tmp_path):
    """Cutting a real set's pages takes minutes: what a resume cannot continue under is refused first."""
    run = tmp_path / "run"
    shutil.copytree(page_run, run)
    for args, said in ((["--height", "24"], "a resumed run keeps its input height (16, not 24)"),
                       (["--spec", "conv:4,3x3 pool:2x2 cols lstm:16,bi ctc"], "a resumed run keeps its model")):
        code, out, err = run_cli(capsys, "train", "lines", "--resume", str(run), *args)
        assert code == 2 and said in err and "preparing" not in err and err.count("\n") == 1, err
