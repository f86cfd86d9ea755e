"""Data a checkpoint is tied to: eval scores other data by what the model's outputs mean (fonts by name,
text by the checkpoint's vocabulary) or refuses it in one line; resuming on changed data is refused."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from convrnn.data import fonts as F
from convrnn.data.text import Vocab, split_corpus
from convrnn.errors import ConfigError, DataError
from convrnn.recipes.base import get_recipe
from convrnn.train.config import TrainConfig

from helpers import run_cli, train_cli

SANS, SERIF, MONO = (str(f.path) for f in F.default_fonts()[:3])


def fonts_config(tmp_path, fonts, **kw):
    return F.FontsDataConfig(fonts=list(fonts), samples_per_font=12, val_fraction=0.25, seed=3,
                             cache_dir=str(tmp_path / "cache"), **kw)


def labels_of(source) -> np.ndarray:
    return np.concatenate([b["y"].numpy() for b in source.batches(0)])


def test_fonts_eval_labels_by_font_name(tmp_path):
    """Fonts given in another order, or fewer of them, are labelled with the checkpoint's classes."""
    recipe = get_recipe("fonts")
    _, _, trained = F.make_fonts_data(fonts_config(tmp_path, [SANS, SERIF, MONO]))
    for order in ([SERIF, SANS, MONO], [MONO, SANS]):
        cfg = fonts_config(tmp_path, order)
        _, val, built = F.make_fonts_data(cfg)
        got = labels_of(recipe.make_split(cfg, TrainConfig(), "val", trained))
        names = [built["classes"][k] for k in val.labels]
        assert [trained["classes"][k] for k in got] == names
        assert not np.array_equal(got, val.labels)  # the data's own numbering would have been wrong


def test_fonts_eval_refuses_what_the_model_cannot_read(tmp_path, monkeypatch):
    recipe = get_recipe("fonts")
    _, _, trained = F.make_fonts_data(fonts_config(tmp_path, [SANS, SERIF]))
    import convrnn.recipes.fonts as fonts_recipe
    drawn = []
    monkeypatch.setattr(fonts_recipe, "make_fonts_data", lambda *a, **k: drawn.append(1) or F.make_fonts_data(*a, **k))
    with pytest.raises(DataError, match=r"font DejaVuSansMono \(in .*\): not among the classes this model was "
                                        r"trained on \(DejaVuSans, DejaVuSerif\); a font added since training"):
        recipe.make_split(fonts_config(tmp_path, [SANS, MONO]), TrainConfig(), "val", trained)
    assert not drawn  # refused before any line is drawn
    with pytest.raises(ConfigError, match="the data does not fit this run's model: height 20 where the checkpoint "
                                          "has 16"):
        recipe.make_split(fonts_config(tmp_path, [SANS, SERIF], height=20), TrainConfig(), "val", trained)


def test_charlm_eval_encodes_with_the_checkpoint_vocabulary(tmp_path, caplog):
    recipe = get_recipe("charlm")
    cfg = recipe.default_config().data
    trained = "the cat sat on the mat and the dog ate the hat " * 40
    meta = {"unit": "char", "vocab": Vocab.from_text(split_corpus(trained, cfg.val_fraction)[0]).to_dict()}
    other = tmp_path / "other.txt"
    other.write_text("a hat! the mat. " * 200, encoding="utf-8")  # '!' and '.' the model never saw
    cfg.path = str(other)
    with caplog.at_level(logging.WARNING):
        source = recipe.make_split(cfg, TrainConfig(batch_size=4), "val", meta)
    assert "'!'" in caplog.text and "'.'" in caplog.text
    ids = np.concatenate([b["x"].numpy().reshape(-1) for b in source.batches(0)])
    vocab = Vocab.from_dict(meta["vocab"])
    read = vocab.decode(ids)
    assert read and set(read) <= set("the cat sat on mat and dog ate hat")
    # the data's own vocabulary (without 'c', 'd', 'g', 'n', 'o', 's') would number them otherwise
    assert Vocab.from_text("a hat the mat ").chars != vocab.chars
    with pytest.raises(ConfigError, match="unit 'byte' where the checkpoint has 'char'"):
        cfg.unit = "byte"
        recipe.make_split(cfg, TrainConfig(batch_size=4), "val", meta)


def test_cli_eval_and_resume_refuse_data_the_run_was_not_trained_on(tmp_path, capsys):
    run = tmp_path / "run"
    train_cli("-q", "train", "fonts", "--run-dir", str(run), "--fonts", SANS, "--fonts", SERIF,
              "--samples-per-font", "20", "--max-steps", "2", "--batch-size", "8")
    capsys.readouterr()
    code, out, err = run_cli(capsys, "eval", str(run), "--set", "data.height=20")
    assert code == 2 and "height 20 where the checkpoint has 16" in err and err.count("\n") == 1
    code, out, err = run_cli(capsys, "eval", str(run), "--set", f"data.fonts={SERIF},{SANS}")
    assert code == 0, err
    code, out, err = run_cli(capsys, "train", "fonts", "--resume", str(run), "--max-steps", "4",
                             "--set", f"data.fonts={SERIF},{SANS}")
    assert code == 2 and f"--resume {run}: the data no longer matches the checkpoint: classes " in err
    assert "['DejaVuSerif', 'DejaVuSans'] where the checkpoint has ['DejaVuSans', 'DejaVuSerif']" in err
    # a refused resume leaves the run as it was: its config still says what the checkpoint holds, so a
    # plain resume goes on
    code, out, err = run_cli(capsys, "train", "fonts", "--resume", str(run), "--height", "24", "--max-steps", "4")
    assert code == 2 and "a resumed run keeps its input height (16, not 24)" in err
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["height"] == 16 and saved["train"]["max_steps"] == 2
    assert [Path(f).name for f in saved["data"]["fonts"]] == [Path(SANS).name, Path(SERIF).name]
    code, out, err = run_cli(capsys, "-q", "train", "fonts", "--resume", str(run), "--max-steps", "4")
    assert code == 0, err
