"""Right-to-left scripts in the lines recipe: texts are learned in display order (the order a line
image shows them from the left) and readings come back in logical order."""
import logging
import os

import matplotlib
import numpy as np
import pytest
import torch

from convrnn.data.lines import build_alphabet, line_batches, reading_base, write_line_folder
from convrnn.data.synthetic_lines import text_lines
from convrnn.data.text import base_direction, display_order, first_strong, logical_order
from convrnn.layers.base import ModelOutput
from convrnn.spec import build_model
from convrnn.tasks.ctc import CTCTask

from helpers import run_cli

SHALOM, OLAM = "\u05e9\u05dc\u05d5\u05dd", "\u05e2\u05d5\u05dc\u05dd"  # two Hebrew words
SALAM = "\u0633\u0644\u0627\u0645"  # an Arabic word
DEJAVU = os.path.join(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")  # draws Hebrew


# a few steps of a tiny crnn on a folder of lines (add --data, --run-dir)
TINY_RUN = ("--height", "16", "--max-steps", "2", "--batch-size", "8", "--model", "crnn:filters=4,hidden_size=8")


def _spelling(task: CTCTask, labels: list) -> ModelOutput:
    """Logits whose greedy reading is ``labels``: each label at a frame, a blank after it."""
    y = torch.full((1, 2 * len(labels), task.num_outputs), -10.0)
    for t, k in enumerate(labels):
        y[0, 2 * t, k] = 10.0
        y[0, 2 * t + 1, 0] = 10.0
    return ModelOutput(y, torch.tensor([2 * len(labels)]))


def test_display_order_reverses_right_to_left_runs_and_keeps_numbers():
    text = f"{SHALOM} {OLAM} 1948."
    shown = display_order(text, "R")
    assert shown == f".1948 {OLAM[::-1]} {SHALOM[::-1]}"  # read from the left: the full stop first, digits kept
    assert logical_order(shown, "R") == text
    mixed = f"abc {SHALOM} def"
    assert display_order(mixed, "L") == f"abc {SHALOM[::-1]} def"
    assert logical_order(display_order(mixed, "L"), "L") == mixed
    assert display_order(f"{SALAM} 12", "R") == f"12 {SALAM[::-1]}"
    assert display_order("caf\u00e9 (12)", "R") == "caf\u00e9 (12)"  # nothing right to left: unchanged
    assert display_order(f"({SHALOM})", "R") == f"){SHALOM[::-1]}("  # brackets keep their code points


def test_paragraph_direction_is_that_of_most_texts():
    assert first_strong(f"12, {SHALOM} abc") == "R" and first_strong("12 abc") == "L" and first_strong("12.") == ""
    assert base_direction([SHALOM, f"{OLAM} abc", "abc", "12"]) == "R"
    assert base_direction([SHALOM, "abc"]) == "L"  # a tie: left to right
    assert base_direction([]) == "L"


def test_reading_base_follows_the_setting_and_says_how_it_reads(caplog):
    texts = [SHALOM, OLAM, "abc"]
    with caplog.at_level(logging.INFO, logger="convrnn.data.lines"):
        assert reading_base(texts, "auto", "pages/") == "R"
    assert "pages/: 2 of 3 training lines hold right-to-left characters" in caplog.text
    assert "paragraphs right to left (data.bidi=auto)" in caplog.text
    assert reading_base(texts, "ltr") == "L" and reading_base(texts, "rtl") == "R"
    assert reading_base(texts, "none") is None
    assert reading_base(["abc", "def"], "auto") == "L"


def test_task_labels_in_display_order_and_reads_back_in_logical_order():
    text = f"{SHALOM} 12"
    task = CTCTask(build_alphabet([text]), bidi="R")
    batch = task.with_targets({"texts": [text], "ids": ["a"]})
    labels = batch["targets"].tolist()
    assert task.to_text(labels) == display_order(text, "R") == f"12 {SHALOM[::-1]}"
    assert task.reading(labels) == text
    assert task.texts_from_targets(batch) == [text]
    plain = CTCTask(build_alphabet([text]))  # no bidi: the text as stored
    assert plain.to_text(plain.with_targets({"texts": [text]})["targets"].tolist()) == text
    # greedy decoding of logits that spell the display order gives the logical text
    out = _spelling(task, labels)
    assert task.decode(out) == [text]
    metrics = task.new_metrics()
    metrics.update(out, {"texts": [text], "ids": ["a"]})
    assert metrics.compute()["cer"] == 0.0


def test_word_lists_and_language_model_texts_are_searched_in_display_order(tmp_path):
    words = tmp_path / "words.txt"
    words.write_text(f"{SHALOM}\n{OLAM}\n", encoding="utf-8")
    task = CTCTask(build_alphabet([f"{SHALOM} {OLAM}"]), bidi="R")
    searched = task.with_decoding(lexicon=str(words), lm=str(words))
    assert set(searched.search["lexicon"].root) == {SHALOM[-1], OLAM[-1]}  # words spelt from the left
    labels = [task.index[ch] for ch in display_order(f"{SHALOM} {OLAM}", "R")]
    assert searched.decode(_spelling(task, labels)) == [f"{SHALOM} {OLAM}"]


def _hebrew_corpus(path, lines: int = 400, seed: int = 0):
    rng = np.random.default_rng(seed)
    letters = list("\u05d0\u05d1\u05d2\u05d3\u05d4\u05d5\u05d6\u05d7\u05d8\u05d9\u05db\u05dc\u05de\u05e0")
    path.write_text("\n".join(" ".join("".join(rng.choice(letters, rng.integers(2, 5))) for _ in range(3))
                              for _ in range(lines)), encoding="utf-8")
    return path


def test_right_to_left_lines_are_learned_only_in_display_order(tmp_path):
    """Printed Hebrew lines (drawn as they are printed, right to left) with texts in logical order, as
    transcriptions store them: in display order a small model reads held-out lines within 40 passes
    over 300 lines; fed the texts as stored, CTC cannot align them."""
    torch.manual_seed(0)
    corpus = str(_hebrew_corpus(tmp_path / "hebrew.txt"))
    train = text_lines(300, split="train", height=16, text=corpus, fonts=[DEJAVU], max_chars=8, base="R")
    val = text_lines(60, split="val", height=16, text=corpus, fonts=[DEJAVU], max_chars=8, base="R")
    cer = {}
    for bidi in ("R", None):
        torch.manual_seed(0)
        task = CTCTask(build_alphabet(train.texts), bidi=bidi)
        model = build_model("conv:16,3x3 pool:2x2 conv:32,3x3 pool:2x1 cols lstm:48,bi ctc", (1, 16, None),
                            task.num_outputs)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for epoch in range(40):
            for batch in line_batches(train, 16, seed=epoch).batches(epoch):
                loss = task.loss(model.run(batch["x"], batch["lengths"]), batch)
                opt.zero_grad()
                loss.backward()
                opt.step()
        model.eval()
        metrics = task.new_metrics()
        with torch.no_grad():
            for batch in line_batches(val, 64, shuffle=False).batches(0):
                metrics.update(model.run(batch["x"], batch["lengths"]), batch)
        cer[bidi] = metrics.compute()["cer"]
    assert cer["R"] < 0.15 and cer[None] > 0.5, cer


@pytest.fixture(scope="module")
def hebrew_folder(tmp_path_factory):
    base = tmp_path_factory.mktemp("rtl")
    corpus = str(_hebrew_corpus(base / "hebrew.txt", lines=60))
    lines = text_lines(24, split="train", height=16, text=corpus, fonts=[DEJAVU], max_chars=8, base="R")
    return write_line_folder(lines, base / "lines")


@pytest.mark.parametrize("given, held", [((), "R"), (("--bidi", "none"), None), (("--bidi", "ltr"), "L")])
def test_a_run_keeps_the_direction_it_learned_with(tmp_path, capsys, hebrew_folder, given, held):
    from convrnn.infer.run import load_run

    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "lines", "--data", str(hebrew_folder), *TINY_RUN,
                             "--run-dir", str(run), *given)
    assert code == 0, err
    assert ("training lines hold right-to-left characters" in err) == (held is not None), err
    loaded = load_run(str(run), expect_recipe="lines")
    assert loaded.ckpt["meta"]["bidi"] == held and loaded.task.bidi == held
    code, out, err = run_cli(capsys, "predict", str(run), str(next(hebrew_folder.glob("*.png"))))
    assert code == 0, err
    if held == "R":  # an exported model says which order its labels are in
        import onnx

        code, out, err = run_cli(capsys, "export", str(run))
        assert code == 0, err
        props = {p.key: p.value for p in onnx.load(str(run / "model.onnx")).metadata_props}
        assert props["convrnn_bidi"] == "R" and "convrnn_alphabet" in props


def test_a_resume_in_another_order_is_refused(tmp_path, capsys, hebrew_folder):
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--data", str(hebrew_folder), *TINY_RUN,
                             "--run-dir", str(run))
    assert code == 0, err
    before = sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*"))
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--resume", str(run), "--max-steps", "4", "--bidi", "none")
    assert code == 2 and "bidi None where the checkpoint has 'R'" in err and err.count("error: ") == 1, err
    assert sorted((p.name, p.stat().st_mtime_ns) for p in run.rglob("*")) == before  # the run as it was


def test_combining_marks_stay_with_their_letters_both_ways():
    katab = "\u0643\u064e\u062a\u064e\u0628\u064e"  # Arabic: three letters, each with a fatha after it
    shown = display_order(katab, "R")
    assert shown == "\u0628\u064e\u062a\u064e\u0643\u064e"  # letters reversed, each mark still after its letter
    for base in ("R", "L"):
        for text in (katab, f"abc {katab} def", "caf\u00e9 \u05e9\u05b8\u05c1\u05dc\u05d5\u05b9\u05dd"):
            assert logical_order(display_order(text, base), base) == text, (base, text)


def test_texts_that_cannot_come_back_as_written_are_counted(caplog):
    texts = [f"{SHALOM} 5", f"abc {OLAM}", "abc", "def"]  # a left-to-right run: the number is ambiguous
    with caplog.at_level(logging.INFO, logger="convrnn.data.lines"):
        assert reading_base(texts, "auto", "pages/") == "L"
    assert "1 of those 2 texts would not come back as written" in caplog.text
    assert "--bidi rtl" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="convrnn.data.lines"):
        reading_base(texts, "rtl", "pages/")
    assert "would not come back" not in caplog.text


def test_a_word_list_keeps_punctuation_with_the_word():
    task = CTCTask(build_alphabet([f"{SHALOM}, {OLAM} abc,"]), bidi="L")
    assert task.encode(SHALOM) == [task.index[ch] for ch in SHALOM[::-1]]  # labels in display order
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        words = os.path.join(tmp, "words.txt")
        with open(words, "w", encoding="utf-8") as fh:
            fh.write(f"{SHALOM},\nabc,\n")
        root = task.with_decoding(lexicon=words).search["lexicon"].root
    # inside a line, the comma after a Hebrew word stands at its left; after a Latin word, at its right
    assert set(root) == {",", "a"} and SHALOM[-1] in root[","]
    line = display_order(f"{SHALOM}, {OLAM}", "L")
    assert line.split(" ")[-1] == f",{SHALOM[::-1]}"


def test_a_run_from_before_right_to_left_support_goes_on_taking_texts_as_stored(tmp_path, capsys, hebrew_folder):
    import json

    from convrnn.infer.run import load_run
    from convrnn.train.checkpoint import load_checkpoint, save_checkpoint

    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--data", str(hebrew_folder), *TINY_RUN,
                             "--run-dir", str(run), "--bidi", "none")
    assert code == 0, err
    # as a run made before the setting existed: neither its config nor its checkpoints name it
    config = json.loads((run / "config.json").read_text())
    del config["data"]["bidi"]
    (run / "config.json").write_text(json.dumps(config))
    for path in (run / "checkpoints").rglob("*.pt"):
        ckpt = load_checkpoint(path)
        del ckpt["meta"]["bidi"], ckpt["config"]["data"]["bidi"]
        save_checkpoint(path, ckpt)
    assert load_run(str(run), expect_recipe="lines").task.bidi is None
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and "cer:" in out, err
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--resume", str(run), "--max-steps", "4")
    assert code == 0, err  # the default is auto now, but the run goes on with its texts as stored
    resumed = load_run(str(run), expect_recipe="lines")
    assert resumed.ckpt["meta"]["bidi"] is None and resumed.ckpt["config"]["data"]["bidi"] == "none"


def test_eval_of_drawn_lines_in_another_direction_is_refused(tmp_path, capsys):
    corpus = str(_hebrew_corpus(tmp_path / "hebrew.txt", lines=60))
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "-q", "train", "lines", "--synthetic", "text", "--text", corpus, "--fonts", DEJAVU,
                             "--num-train", "16", "--set", "data.num_val=8", "--set", "data.num_test=0", "--height", "16",
                             "--max-steps", "1", "--model", "crnn:filters=4,hidden_size=8", "--run-dir", str(run))
    assert code == 0, err
    code, out, err = run_cli(capsys, "eval", str(run), "--set", "data.bidi=ltr")
    assert code == 2 and "bidi 'L' where the checkpoint has 'R'" in err and err.count("error: ") == 1, err
    code, out, err = run_cli(capsys, "eval", str(run))
    assert code == 0 and "cer:" in out, err
