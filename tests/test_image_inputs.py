"""User images of every kind read as a viewer shows them, and outputs that never replace what they must not.

16-bit, 32-bit and float images are scaled to 8 bits by their value range (not clipped to white),
EXIF orientation is applied, oversized images and folders are refused in one line; the CTC plot,
the ONNX export, the report and the MNIST download write through convrnn.files (a symlink's
target gets the file, a FIFO is left alone, an impossible --out fails in one line leaving nothing).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from PIL import Image

from convrnn.cli import main
from convrnn.data.images import load_gray
from convrnn.data.lines import read_lines
from convrnn.errors import DataError, WriteError

from helpers import run_cli

RNG = np.random.default_rng(0)
GRAY8 = RNG.integers(0, 256, size=(9, 14), dtype=np.uint8)  # every level the 8-bit image can hold


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def sixteen_bit(gray8: np.ndarray) -> Image.Image:
    """The 8-bit image widened to 16 bits as scanners do (v * 257: 255 -> 65535)."""
    return Image.fromarray(gray8.astype(np.uint16) * 257)


def line_image(height: int = 16, width: int = 60) -> np.ndarray:
    """Dark ink on white paper, darker towards the left so that a turned image reads differently."""
    img = np.full((height, width), 255, dtype=np.uint8)
    img[4:12, 5:width - 5] = np.linspace(0, 150, width - 10).astype(np.uint8)[None, :]
    img[2:14, 8:11] = 0  # a tall stroke near the start
    return img


# ------------------------------------------------------------------------------ pixel values

@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16_bit_images_read_as_the_8_bit_values_they_widen(tmp_path, fmt):
    path = tmp_path / f"g16.{fmt}"
    im = sixteen_bit(GRAY8)
    im.save(path)
    assert Image.open(path).mode.startswith("I;16")  # what Pillow hands over: clipped to white by convert("L")
    assert np.array_equal(load_gray(path), GRAY8)


def test_16_bit_values_between_the_8_bit_levels_round_to_the_nearest(tmp_path):
    path = tmp_path / "g16.png"
    Image.fromarray(np.array([[0, 128, 129, 257 * 100 + 128, 65535]], dtype=np.uint16)).save(path)
    assert load_gray(path).tolist() == [[0, 0, 1, 100, 255]]


def test_float_images_in_0_to_1_are_fractions_of_white(tmp_path):
    path = tmp_path / "f.tiff"
    Image.fromarray(GRAY8.astype(np.float32) / 255).save(path)
    assert Image.open(path).mode == "F"
    assert np.array_equal(load_gray(path), GRAY8)


def test_images_past_16_bits_are_stretched_from_their_minimum_to_their_maximum(tmp_path):
    path = tmp_path / "i32.tiff"
    Image.fromarray(GRAY8.astype(np.int32) * 100_000 - 7_000_000).save(path)  # neither 8 nor 16 bits
    assert Image.open(path).mode == "I"
    gray = load_gray(path)
    lo, hi = int(GRAY8.min()), int(GRAY8.max())
    assert np.array_equal(gray, np.round((GRAY8.astype(float) - lo) * 255 / (hi - lo)).astype(np.uint8))


def test_a_float_image_with_nan_pixels_is_refused(tmp_path):
    path = tmp_path / "nan.tiff"
    data = GRAY8.astype(np.float32)
    data[0, :3] = np.nan
    Image.fromarray(data).save(path)
    with pytest.raises(DataError, match=r"nan\.tiff: 3 pixels are not finite numbers"):
        load_gray(path)


def test_transparent_pixels_are_background_not_their_hidden_black(tmp_path):
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)  # transparent black everywhere...
    rgba[2:4, 2:6] = [0, 0, 0, 255]              # ...but opaque black ink
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    gray = load_gray(tmp_path / "a.png")
    assert gray[2:4, 2:6].max() == 0 and gray[0].min() == 255


def test_light_ink_on_a_transparent_ground_is_laid_over_black(tmp_path):
    rgba = np.zeros((6, 8, 4), dtype=np.uint8)      # transparent everywhere...
    rgba[2:4, 2:6] = [255, 255, 255, 255]            # ...but opaque white ink: made for a dark page
    rgba[2, 6] = [255, 255, 255, 128]                # an antialiased edge
    Image.fromarray(rgba, "RGBA").save(tmp_path / "white.png")
    gray = load_gray(tmp_path / "white.png")
    assert gray[2:4, 2:6].min() == 255 and gray[0].max() == 0 and 0 < gray[2, 6] < 255
    # a line image with opaque paper and transparent margins stays over white: its margins are paper
    rgba[:, 1:7] = [250, 250, 250, 255]
    rgba[3, 3:5] = [0, 0, 0, 255]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "paper.png")
    gray = load_gray(tmp_path / "paper.png")
    assert gray[:, 0].min() == 255 and gray[3, 3] == 0


# ------------------------------------------------------------------------------- orientation

@pytest.mark.parametrize("orientation, turn", [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, 1)),
                                               (8, lambda a: np.rot90(a, -1)), (2, np.fliplr)])
def test_exif_orientation_is_applied(tmp_path, orientation, turn):
    upright = line_image()
    stored = Image.fromarray(np.ascontiguousarray(turn(upright)))  # the pixels as a camera stores them
    exif = stored.getexif()
    exif[0x0112] = orientation  # ...and the tag that says how to show them upright
    stored.save(tmp_path / "shot.png", exif=exif.tobytes())
    assert np.array_equal(load_gray(tmp_path / "shot.png"), upright)


def test_exif_orientation_of_a_jpeg_is_applied(tmp_path):
    upright = line_image(32, 96)
    Image.fromarray(upright).save(tmp_path / "upright.jpg", quality=95)
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 2)))
    exif = stored.getexif()
    exif[0x0112] = 3  # rotated 180 degrees
    stored.save(tmp_path / "turned.jpg", quality=95, exif=exif.tobytes())
    turned = load_gray(tmp_path / "turned.jpg").astype(int)
    assert turned.shape == upright.shape
    assert np.abs(turned - load_gray(tmp_path / "upright.jpg").astype(int)).mean() < 3  # JPEG noise only


# --------------------------------------------------------------------------- refused inputs

def test_an_image_over_the_pixel_limit_is_refused_in_one_line_naming_its_size(tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the real limit, ~89 million, with tiny files
    Image.new("L", (50, 30), 255).save(tmp_path / "big.png")      # Pillow warns (over the limit)
    Image.new("L", (100, 100), 255).save(tmp_path / "huge.png")   # Pillow raises (over twice the limit)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        with pytest.raises(DataError) as big:
            load_gray(tmp_path / "big.png")
        with pytest.raises(DataError) as huge:
            load_gray(tmp_path / "huge.png")
    assert str(big.value) == (f"{tmp_path / 'big.png'}: the image is too large (50x30 = 1,500 pixels; at most "
                              f"1,000 are read, Pillow's decompression-bomb limit); scale it down")
    assert str(huge.value) == (f"{tmp_path / 'huge.png'}: the image is too large (10,000 pixels; at most "
                               f"1,000 are read, Pillow's decompression-bomb limit); scale it down")
    assert Image.MAX_IMAGE_PIXELS == 1000  # the limit is used, not switched off


def test_a_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(DataError, match="expected an image file, found a folder"):
        load_gray(tmp_path)
    with pytest.raises(DataError, match="no such image file"):
        load_gray(tmp_path / "missing.png")


# --------------------------------------------------------------- every loader shares the fix

def test_a_training_line_folder_of_16_bit_images_reads_like_8_bit(tmp_path):
    for name, save in (("eight", lambda p: Image.fromarray(line_image()).save(p)),
                       ("sixteen", lambda p: sixteen_bit(line_image()).save(p))):
        (tmp_path / name).mkdir()
        save(tmp_path / name / "a.png")
        (tmp_path / name / "a.gt.txt").write_text("12\n")
    eight = read_lines(str(tmp_path / "eight"), height=16)
    sixteen = read_lines(str(tmp_path / "sixteen"), height=16)
    assert sixteen.texts == ["12"]
    assert np.array_equal(sixteen.images[0], eight.images[0])


def test_a_page_scan_of_16_bits_cuts_the_same_lines(tmp_path):
    from test_pagexml import write_page

    xml8 = write_page(tmp_path / "eight")
    xml16 = write_page(tmp_path / "sixteen")
    sixteen_bit(load_gray(tmp_path / "eight" / "page.png")).save(tmp_path / "sixteen" / "page.png")
    eight, sixteen = read_lines(str(xml8), height=16, workers=1), read_lines(str(xml16), height=16, workers=1)
    assert len(sixteen.images) == len(eight.images) == 5
    assert all(np.array_equal(a, b) for a, b in zip(eight.images, sixteen.images))


# ------------------------------------------------------------------------------ through the CLI

@pytest.fixture(scope="module")
def lines_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("image_inputs") / "run"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "train", "lines", "--synthetic", "digits", "--mnist-dir", "sklearn", "--num-train", "32",
              "--height", "16", "--max-digits", "3", "--max-steps", "2", "--batch-size", "16", "--threads", "1",
              "--run-dir", str(run), "--set", "data.num_val=16", "--set", "data.num_test=8",
              "--spec", "conv:8,3x3 pool:2x2 cols lstm:8,bi ctc"])
    assert exc.value.code == 0
    return run


def _texts(out: str) -> list[str]:
    return [line.split("\t", 1)[1] for line in out.splitlines()]


def test_predict_reads_16_bit_and_turned_images_as_their_upright_8_bit_copy(lines_run, tmp_path, capsys):
    upright = line_image()
    Image.fromarray(upright).save(tmp_path / "g8.png")
    sixteen_bit(upright).save(tmp_path / "g16.png")
    stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, 2)))
    exif = stored.getexif()
    exif[0x0112] = 3
    stored.save(tmp_path / "turned.png", exif=exif.tobytes())
    code, out, err = run_cli(capsys, "predict", str(lines_run), *(str(tmp_path / n) for n in
                                                                  ("g8.png", "g16.png", "turned.png")))
    assert code == 0, err
    eight, sixteen, turned = _texts(out)
    assert sixteen == eight and turned == eight
    # and the model's outputs agree exactly, not just its reading
    from convrnn.data.lines import prepare_line
    assert np.array_equal(prepare_line(tmp_path / "g16.png", 16), prepare_line(tmp_path / "g8.png", 16))


def test_predict_names_a_folder_without_page_xml_as_a_folder(lines_run, tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    code, out, err = run_cli(capsys, "predict", str(lines_run), str(tmp_path / "scans"))
    assert code == 2 and out == ""
    assert one_line(err) == (f"error: {tmp_path / 'scans'}: expected an image file, found a folder; give the "
                             f"image files in it (for example {tmp_path / 'scans' / '*.png'})")
    Image.new("L", (40, 16), 255).save(tmp_path / "scans" / "a.jpg")  # the example is what the folder holds
    code, out, err = run_cli(capsys, "predict", str(lines_run), str(tmp_path / "scans"))
    assert code == 2 and f"(for example {tmp_path / 'scans' / '*.jpg'})" in one_line(err)
    code, out, err = run_cli(capsys, "predict", str(lines_run), f"{tmp_path / 'gone'}/")
    assert code == 2 and one_line(err) == f"error: {tmp_path / 'gone'}/: no such folder"


def test_ctc_plot_writes_a_symlinks_target_and_leaves_a_fifo_alone(lines_run, tmp_path, capsys):
    image = tmp_path / "line.png"
    Image.fromarray(line_image()).save(image)
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    code, out, err = run_cli(capsys, "plot", "ctc", str(lines_run), str(image), "--out", str(fifo))
    assert code == 2 and out == ""
    assert "not a regular file (a FIFO)" in one_line(err)
    assert (tmp_path / "pipe.png").is_fifo()
    (tmp_path / "plots").mkdir()
    link = tmp_path / "ctc.png"
    link.symlink_to(tmp_path / "plots" / "real.png")
    code, out, err = run_cli(capsys, "plot", "ctc", str(lines_run), str(image), "--out", str(link))
    assert code == 0, err
    assert link.is_symlink() and (tmp_path / "plots" / "real.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ctc.png", "line.png", "pipe.png", "plots"]


def test_export_follows_a_symlink_and_refuses_a_fifo(lines_run, tmp_path, capsys):
    fifo = tmp_path / "m.onnx"
    os.mkfifo(fifo)
    code, out, err = run_cli(capsys, "export", str(lines_run), "--out", str(fifo))
    assert code == 2 and out == "" and "not a regular file (a FIFO)" in one_line(err)
    assert fifo.is_fifo()
    link = tmp_path / "link.onnx"
    link.symlink_to(tmp_path / "real.onnx")
    code, out, err = run_cli(capsys, "export", str(lines_run), "--out", str(link))
    assert code == 0, err
    assert link.is_symlink() and (tmp_path / "real.onnx").stat().st_size > 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.onnx", "m.onnx", "real.onnx"]


@pytest.mark.parametrize("command", ["export", "report"])
def test_an_out_below_a_regular_file_fails_in_one_line_before_any_work(lines_run, tmp_path, capsys, monkeypatch,
                                                                       command):
    import convrnn.infer.run

    def no_work(*args, **kwargs):
        raise AssertionError("the run was loaded although --out cannot be written")

    # export and report check their --out before they load the run (report: in build_report)
    monkeypatch.setattr(convrnn.infer.run, "load_run", no_work)
    (tmp_path / "afile").write_text("keep me")
    out_path = tmp_path / "afile" / ("m.onnx" if command == "export" else "r.html")
    code, out, err = run_cli(capsys, command, str(lines_run), "--out", str(out_path))
    assert code == 2 and out == ""
    assert one_line(err) == (f"error: {out_path}: cannot write, a part of its folder {tmp_path / 'afile'} is a "
                             f"file, not a folder")
    assert (tmp_path / "afile").read_text() == "keep me" and os.listdir(tmp_path) == ["afile"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_export_into_a_read_only_folder_fails_in_one_line(lines_run, tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        code, out, err = run_cli(capsys, "export", str(lines_run), "--out", str(folder / "m.onnx"))
    finally:
        folder.chmod(0o755)
    assert code == 2 and out == "" and "read-only or not writable" in one_line(err)
    assert os.listdir(folder) == []


def test_export_that_fails_while_writing_leaves_nothing_and_says_so_in_one_line(lines_run, tmp_path, capsys,
                                                                                monkeypatch):
    import convrnn.files

    def refuse(src, dst):  # what a read-only or full filesystem does to the final rename
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(convrnn.files.os, "replace", refuse)
    code, out, err = run_cli(capsys, "export", str(lines_run), "--out", str(tmp_path / "m.onnx"))
    assert code == 2 and out == ""
    assert one_line(err) == (f"error: {tmp_path / 'm.onnx'}: cannot write (Read-only file system); "
                             f"the previous file is untouched")
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------------------- the download

def test_download_fills_a_symlinks_target_and_refuses_a_fifo(tmp_path, monkeypatch):
    from test_download import MD5, PAYLOAD, fetch

    from convrnn.data.download import RemoteFile

    (tmp_path / "store").mkdir()
    (tmp_path / "a.gz").symlink_to(tmp_path / "store" / "a.gz")
    os.mkfifo(tmp_path / "b.gz")
    httpd = _serve(monkeypatch)
    try:
        httpd.files.update({"a.gz": PAYLOAD, "b.gz": PAYLOAD})
        assert fetch(httpd, tmp_path, [RemoteFile("a.gz", MD5)]) == [tmp_path / "a.gz"]
        assert (tmp_path / "a.gz").is_symlink() and (tmp_path / "store" / "a.gz").read_bytes() == PAYLOAD
        with pytest.raises(WriteError, match=r"b\.gz: cannot write, not a regular file \(a FIFO\)"):
            fetch(httpd, tmp_path, [RemoteFile("b.gz", MD5)])
        assert (tmp_path / "b.gz").is_fifo() and [name for name, _ in httpd.requests] == ["a.gz"]
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gz", "b.gz", "store"]


def _serve(monkeypatch):
    """test_download's local HTTP server on 127.0.0.1 (as its ``server`` fixture starts it)."""
    import http.server
    import threading

    from test_download import FixtureHandler

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FixtureHandler)
    httpd.files, httpd.modes, httpd.requests, httpd.already_cut = {}, {}, [], set()
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}/mnist/"
    return httpd


def test_outputs_never_replace_their_inputs_or_the_runs_files(lines_run, tmp_path, capsys):
    """An --out that names the line image read, or a file the run keeps (a checkpoint, its config, its
    metrics), is refused before any work: written over, the input or the run would be lost."""
    image = tmp_path / "line.png"
    Image.fromarray(line_image()).save(image)
    before = image.read_bytes()
    code, out, err = run_cli(capsys, "plot", "ctc", str(lines_run), str(image), "--out", str(image))
    assert code == 2 and one_line(err) == (f"error: {image}: a file this command reads; refusing to write over "
                                           f"it, give another file name")
    assert image.read_bytes() == before
    best, config = lines_run / "checkpoints" / "best.pt", lines_run / "config.json"
    kept = {p: p.read_bytes() for p in (best, config, lines_run / "metrics.csv")}
    for args in (["export", str(lines_run), "--out", str(best)], ["report", str(lines_run), "--out", str(config)],
                 ["plot", "curves", str(lines_run), "--out", str(lines_run / "metrics.csv")],
                 ["plot", "filters", str(lines_run), "--out", str(best)]):
        code, out, err = run_cli(capsys, *args)
        assert code == 2 and "a file this command reads; refusing to write over it" in one_line(err), (args, err)
    assert all(p.read_bytes() == data for p, data in kept.items())


def test_ctc_plot_refuses_an_empty_path_and_a_page_image(lines_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "plot", "ctc", str(lines_run), "")
    assert code == 2 and one_line(err) == "error: '': an empty path for the line image (an unset shell variable?)"
    Image.fromarray(line_image()).save(tmp_path / "scan.png")
    (tmp_path / "scan.xml").write_text("<alto/>", encoding="utf-8")
    code, out, err = run_cli(capsys, "plot", "ctc", str(lines_run), str(tmp_path / "scan.png"))
    assert code == 2 and "a page image, whose page XML is" in one_line(err) and "plot ctc draws one line" in err
    assert not (tmp_path / "ctc.png").exists()


def test_plot_outputs_are_png_files_by_name(lines_run, tmp_path, capsys):
    for out, said in ((tmp_path / "c.jpg", "this command writes a PNG image; give a name ending in .png"),
                      (f"{tmp_path / 'plots'}/", "cannot write, a folder name (it ends with /); give a file name")):
        code, stdout, err = run_cli(capsys, "plot", "curves", str(lines_run), "--out", str(out))
        assert code == 2 and one_line(err) == f"error: {out}: {said}"
    assert sorted(p.name for p in tmp_path.iterdir()) == []
