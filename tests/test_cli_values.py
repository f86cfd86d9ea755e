"""Values that used to end in a traceback or be dropped silently: each is one line naming the option or
file, exit 2, and nothing written."""
from __future__ import annotations

import json
import logging
import math

import pytest

from convrnn.data import fonts as F
from convrnn.data.text import Vocab
from convrnn.errors import ConfigError
from convrnn.infer.sampling import sample
from convrnn.tasks.ctc import CTCTask

from helpers import line_png, run_cli, train_cli

SANS, SERIF = (str(f.path) for f in F.default_fonts()[:2])
TINY = ["--fonts", SANS, "--fonts", SERIF, "--samples-per-font", "12", "--max-steps", "1", "--batch-size", "8"]


@pytest.fixture(scope="module")
def fonts_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("values") / "run"
    train_cli("-q", "train", "fonts", "--run-dir", str(run), *TINY)
    return run


@pytest.mark.parametrize("args, message", [
    (["--seed", "-1"], "train.seed: expected 0 to 2**32 - 1, got -1"),
    (["--set", "data.seed=4294967296"], "data.seed: expected 0 to 2**32 - 1, got 4294967296"),
    (["--set", "train.weight_decay=-1"], "train.weight_decay: expected 0 or more, got -1.0"),
    (["--set", "train.momentum=5"], "train.momentum: expected 0 or more, below 1, got 5.0"),
    (["--set", "train.val_every=-5"], "train.val_every: expected 0 or more, got -5"),
    (["--set", "train.early_stopping=-1"], "train.early_stopping: expected 0 (off) or more, got -1"),
    (["--threads", "-2"], "train.threads: expected 0 or more, got -2"),
    (["--text", ""], "--text: empty value (an unset shell variable?)"),
    (["--fonts", " "], "--fonts: empty value"),
    (["--config", ""], "--config: empty value"),
    # a --set of what a named option gives would drop one of the two without a word
    (["--set", "train.max_steps=2"], "--set train.max_steps=2: --max-steps gives train.max_steps too (1); give it once"),
    (["--set", "data.samples_per_font=20"], "--samples-per-font gives data.samples_per_font too (12)"),
])
def test_train_refuses_bad_values_before_writing(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "fonts", "--run-dir", str(run), *TINY[4:], *args)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # no run directory, no default runs/ folder


def test_empty_run_dir_is_not_the_default_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "train", "fonts", "--run-dir", "", *TINY[4:])
    assert code == 2 and "--run-dir: empty value" in err
    assert not (tmp_path / "runs").exists()


def test_config_file_sections_must_be_objects(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"recipe": "fonts", "train": [1, 2]}))
    code, out, err = run_cli(capsys, "train", "fonts", "--config", str(cfg), "--run-dir", str(tmp_path / "r"))
    assert code == 2 and f"{cfg}: 'train' must be an object of key: value settings, got list" in err
    assert err.count("\n") == 1 and not (tmp_path / "r").exists()


@pytest.mark.parametrize("temperature", [math.nan, math.inf, -1.0])
def test_sampling_refuses_a_temperature_that_is_not_a_number_at_least_0(temperature):
    with pytest.raises(ConfigError, match="temperature must be a number >= 0"):
        sample(None, Vocab.from_text("ab"), length=3, temperature=temperature)


def test_eval_refuses_settings_it_does_not_read(fonts_run, capsys):
    for key in ("train.lr=5", "model.spec=conv:4 gap fc"):
        code, out, err = run_cli(capsys, "eval", str(fonts_run), "--set", key)
        assert code == 2 and f"--set {key.partition('=')[0]}: eval takes data settings" in err, err
        assert err.count("\n") == 1
    code, out, err = run_cli(capsys, "eval", str(fonts_run), "--set", "train.batch_size=7")
    assert code == 0 and "accuracy:" in out


def test_predict_refuses_text_line_options_for_other_runs(fonts_run, capsys, tmp_path):
    image = line_png(tmp_path / "line.png", width=80, height=24)
    for extra, named in ((["--beam", "3"], "--beam"), (["--out", str(tmp_path / "out")], "--out")):
        code, out, err = run_cli(capsys, "predict", str(fonts_run), image, *extra)
        assert code == 2 and f"{named}: for text-line runs only; {fonts_run} is a fonts run" in err, err
    assert not (tmp_path / "out").exists()
    (tmp_path / "page.xml").write_text("<alto/>", encoding="utf-8")
    code, out, err = run_cli(capsys, "predict", str(fonts_run), str(tmp_path / "page.xml"))
    assert code == 2 and "page.xml: page XML, not an image; page XML is read by text-line runs" in err, err


def test_word_lists_and_lm_texts_the_alphabet_cannot_use_are_refused(tmp_path):
    task = CTCTask("0123456789 ")
    words = tmp_path / "words.txt"
    words.write_text("hello\nworld\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"words.txt: none of its 2 words can be written with the model's alphabet"):
        task.with_decoding(lexicon=str(words))
    (tmp_path / "mixed.txt").write_text("hello 42\n", encoding="utf-8")
    lexicon = task.with_decoding(lexicon=str(tmp_path / "mixed.txt")).search["lexicon"]
    assert lexicon.allows("42", complete=True) and not lexicon.allows("hello", complete=True)
    for text, why in (("", "(it is empty)"), ("\n\n", "(it is empty)"), ("abc\n", "")):
        lm = tmp_path / "lm.txt"
        lm.write_text(text, encoding="utf-8")
        with pytest.raises(ConfigError, match="lm.txt: the language-model text has no character of the model's "
                                              "alphabet" + (r" \(it is empty\)" if why else "$")):
            task.with_decoding(lm=str(lm))


def test_word_lists_and_lm_texts_take_the_runs_normal_form(tmp_path, caplog):
    """A word list saved decomposed (NFD, as some editors and macOS file names write it) matches a model
    of composed (NFC) text: each accented word would otherwise be left out, the list read as shorter."""
    import unicodedata
    task = CTCTask(list("abcdeéft "), normalize="NFC")
    words = tmp_path / "words.txt"
    words.write_text(unicodedata.normalize("NFD", "été café\nzèbre\n"), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="convrnn"):
        lexicon = task.with_decoding(lexicon=str(words)).search["lexicon"]
    assert lexicon.allows("été", complete=True) and lexicon.allows("café", complete=True)
    assert "words.txt: 1 of 3 words use characters the model cannot write (rzè) and are left out, e.g. 'zèbre'" \
        in caplog.text
    lm = tmp_path / "lm.txt"
    lm.write_text(unicodedata.normalize("NFD", "été\n"), encoding="utf-8")
    assert task.with_decoding(lm=str(lm)).search["char_lm"].vocab == {"é", "t"}  # composed, as the model writes
    # a run of decomposed text (data.normalize=NFD) gets its lists decomposed
    task = CTCTask(list("abcdeft ") + ["\u0301"], normalize="NFD")
    words.write_text("été\n", encoding="utf-8")
    assert task.with_decoding(lexicon=str(words)).search["lexicon"].allows(unicodedata.normalize("NFD", "été"),
                                                                          complete=True)


def test_ctrl_c_in_training_says_what_was_kept(tmp_path, monkeypatch, capsys):
    """Ctrl-C ends a training with exit 130 and one line: the run and how to continue it, or that
    nothing was kept before the first checkpoint."""
    import types

    import convrnn.recipes.runner as runner

    run = tmp_path / "run"

    def interrupted_train(recipe, overrides, *, callbacks, **kw):
        trainer = types.SimpleNamespace(run_dir=types.SimpleNamespace(path=run), cfg=types.SimpleNamespace(compile=False))
        for callback in callbacks:
            getattr(callback, "on_train_start", lambda t: None)(trainer)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train", interrupted_train)
    code, out, err = run_cli(capsys, "train", "fonts", "--run-dir", str(run))
    assert code == 130 and err.strip().splitlines()[-1] == "interrupted before the first checkpoint; nothing was kept"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    code, out, err = run_cli(capsys, "train", "fonts", "--run-dir", str(run))
    assert code == 130
    assert err.strip().splitlines()[-1] == (f"interrupted: {run} keeps its last checkpoint; continue it with "
                                            f"`convrnn train fonts --resume {run}`")

    def interrupted_early(recipe, overrides, **kw):  # while the data is read, before the trainer starts
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "train", interrupted_early)
    code, out, err = run_cli(capsys, "train", "fonts", "--resume", str(run))
    assert code == 130  # a resume had not changed the run yet: it is there to continue, not gone
    assert err.strip().splitlines()[-1] == (f"interrupted before training went on; {run} keeps its checkpoints; "
                                            f"continue it with `convrnn train fonts --resume {run}`")


def test_unquoted_pattern_gets_a_hint(tmp_path, capsys):
    pages = [str(tmp_path / f"p{k}.xml") for k in range(3)]  # what the shell makes of an unquoted p*.xml
    code, out, err = run_cli(capsys, "train", "lines", "--data", *pages)
    assert code == 2 and err.count("\n") == 1 and "Got unexpected extra arguments" in err
    assert "repeat it for each (--fonts a.ttf --fonts b.ttf), and quote a pattern such as 'pages/*.xml'" in err


def test_list_settings_take_a_json_list_or_commas():
    from convrnn.fields import parse_value

    assert parse_value("data.fonts", '["a.ttf", "b,c.ttf"]', list[str]) == ["a.ttf", "b,c.ttf"]
    assert parse_value("data.fonts", "a.ttf,b.ttf", list[str]) == ["a.ttf", "b.ttf"]
    with pytest.raises(ConfigError, match=r"data.fonts: '\[a.ttf' starts like a JSON list but is not one"):
        parse_value("data.fonts", "[a.ttf", list[str])


def test_eval_and_predict_take_threads(fonts_run, capsys, tmp_path):
    import torch

    before = torch.get_num_threads()
    try:
        code, out, err = run_cli(capsys, "eval", str(fonts_run), "--threads", "1")
        assert code == 0 and torch.get_num_threads() == 1
        image = line_png(tmp_path / "line.png", width=80, height=24)
        code, out, err = run_cli(capsys, "predict", str(fonts_run), image, "--threads", "1")
        assert code == 0 and out.startswith(image)
        code, out, err = run_cli(capsys, "predict", str(fonts_run), image, "--threads", "-1")
        assert code == 2 and "--threads" in err
    finally:
        torch.set_num_threads(before)


def test_resuming_a_run_that_had_ended_says_which_limit_to_raise(fonts_run, tmp_path, capsys):
    import shutil
    run = tmp_path / "run"
    shutil.copytree(fonts_run, run)
    code, out, err = run_cli(capsys, "train", "fonts", "--resume", str(run))
    assert code == 0, err
    assert "the run had already stopped by the step limit at step 1: nothing to train; raise --max-steps to go on" in err
