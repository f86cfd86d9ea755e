"""The charlm recipe end to end: streams, carried state, exact resume, sampling, byte mode, CLI."""
# B batch, T time steps, V vocabulary
import logging
import math

import numpy as np
import pytest
import torch

from convrnn.data.text import Vocab
from convrnn.errors import DataError
from convrnn.recipes import get_recipe
from convrnn.recipes.charlm import CharLMDataConfig
from convrnn.train.threads import choose_threads
from convrnn.infer.run import load_run
from convrnn.recipes.runner import train
from convrnn.tasks.lm import LanguageModelTask
from convrnn.infer.sampling import sample
from convrnn.spec.builder import build_model
from convrnn.train.config import TrainConfig
from convrnn.train.trainer import Trainer

from helpers import run_cli

TINY_SPEC = "embed:8 lstm:16 lm"
TEXT = "".join(f"line {i}: to be or not to be, that is the question {i * 7 % 13}\n" for i in range(60))


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def tiny_overrides(corpus, run_dir, **extra):
    return {"data.path": str(corpus), "data.seq_len": 8, "train.batch_size": 4, "model.spec": TINY_SPEC,
            "train.max_time": 0.0, "train.threads": 1, "train.device": "cpu", "train.run_dir": str(run_dir),
            "train.checkpoint_every": 2, **extra}


def test_streams_cover_each_training_position_once_and_contiguously(corpus):
    cfg = get_recipe("charlm").config({"data.path": str(corpus), "data.seq_len": 8, "train.batch_size": 4})
    bundle = get_recipe("charlm").make_data(cfg.data, cfg.train)
    src = bundle.train
    xs = torch.cat([b["x"] for b in src.batches(0)], dim=1)  # (B, T) per batch -> (B, L)
    ys = torch.cat([b["y"] for b in src.batches(0)], dim=1)
    offset = src.offset(0)
    expected = src.ids[offset:offset + src.batch_size * src.stripe_len].view(src.batch_size, -1)  # (B*L,) -> (B, L)
    assert torch.equal(xs, expected)
    assert torch.equal(ys[:, :-1], xs[:, 1:])  # each target is the next input of its stream
    assert [b["reset"] for b in src.batches(0)] == [True] + [False] * (src.num_batches(0) - 1)
    assert bundle.meta["vocab"]["chars"] == "".join(sorted(set(TEXT[:int(len(TEXT) * 0.9)])))


def test_random_windows_flag_and_task_counts_chars(corpus):
    cfg = get_recipe("charlm").config({"data.path": str(corpus), "data.stateful": False, "data.seq_len": 5})
    bundle = get_recipe("charlm").make_data(cfg.data, cfg.train)
    batch = next(iter(bundle.train.batches(0)))
    assert batch["reset"] is True and batch["x"].shape == (cfg.train.batch_size, 5)
    task = get_recipe("charlm").make_task(bundle.meta, (None, None, bundle.num_outputs))
    assert task.unit == "chars" and task.count(batch) == cfg.train.batch_size * 5
    assert LanguageModelTask(Vocab(unit="byte")).unit == "bytes"


def test_two_windows_with_carried_state_equal_the_unsplit_sequence():
    torch.manual_seed(0)
    model = build_model("embed:8 lstm:16,layers=2 lm", (None,), 20).eval()
    x = torch.randint(0, 20, (3, 10))
    whole = model.run(x).y
    first = model.run(x[:, :6])
    second = model.run(x[:, 6:], state=first.state)
    assert torch.allclose(torch.cat([first.y, second.y], dim=1), whole, atol=1e-6)
    assert not torch.allclose(model.run(x[:, 6:]).y, whole[:, 6:], atol=1e-3)  # without state it differs


def test_evaluate_carries_state_across_validation_batches(corpus):
    cfg = get_recipe("charlm").config({"data.path": str(corpus)})
    bundle = get_recipe("charlm").make_data(cfg.data, cfg.train)
    torch.manual_seed(0)
    model = build_model(TINY_SPEC, (None,), bundle.num_outputs)
    task = get_recipe("charlm").make_task(bundle.meta, (None, None, bundle.num_outputs))
    trainer = Trainer(model, task, bundle.train, bundle.val, TrainConfig(device="cpu"))
    metrics = trainer.evaluate(bundle.val)
    xs, ys = bundle.val.stripes(0)  # (B, L): one pass over each whole stripe is the reference
    with torch.no_grad():
        logits = model.run(xs).y  # (B, L, V)
        nats = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), ys.reshape(-1))
    assert metrics["loss"] == pytest.approx(float(nats), rel=1e-5)
    assert metrics["bits_per_char"] == pytest.approx(metrics["loss"] / math.log(2))


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_step(self, trainer, info):
        if info["step"] == self.step:
            raise KeyboardInterrupt


def test_resume_mid_epoch_equals_uninterrupted(corpus, tmp_path):
    whole = train("charlm", tiny_overrides(corpus, tmp_path / "a", **{"train.max_steps": 6}))
    assert whole.step == 6 and whole.epochs == 0  # an epoch is longer: the interruption falls mid-epoch
    with pytest.raises(KeyboardInterrupt):
        train("charlm", tiny_overrides(corpus, tmp_path / "b", **{"train.max_steps": 6}), callbacks=[StopAt(5)])
    ckpt = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and ckpt["carried_state"] is not None
    resumed = train("charlm", resume=str(tmp_path / "b"))
    a, b = (torch.load(tmp_path / run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in "ab")
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.metrics["loss"] == pytest.approx(whole.metrics["loss"], rel=1e-6)


def test_a_validation_mid_epoch_leaves_a_resumable_checkpoint(corpus, tmp_path):
    """A validation that keeps best.pt keeps last.pt with it: interrupted before the next checkpoint, the
    run resumes from there rather than holding a best model it can neither resume nor be started over."""
    run = tmp_path / "run"
    settings = tiny_overrides(corpus, run, **{"train.max_steps": 6, "train.val_every": 3, "train.checkpoint_every": 100})
    with pytest.raises(KeyboardInterrupt):
        train("charlm", settings, callbacks=[StopAt(5)])
    assert (run / "checkpoints" / "best.pt").exists()
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 3
    assert train("charlm", resume=str(run)).step == 6


@pytest.fixture()
def trained(corpus, tmp_path):
    train("charlm", tiny_overrides(corpus, tmp_path / "run", **{"train.max_steps": 4}))
    return tmp_path / "run"


def test_vocab_is_saved_in_the_checkpoint_and_sampling_respects_temperature_zero(trained):
    model, ckpt, recipe, _, _ = load_run(str(trained))
    vocab = Vocab.from_dict(ckpt["meta"]["vocab"])
    assert vocab == Vocab.from_text(TEXT[:int(len(TEXT) * 0.9)])
    greedy = sample(model, vocab, prime="to be", length=30, greedy=True)
    cold = sample(model, vocab, prime="to be", length=30, temperature=1e-6, seed=3)
    assert greedy == cold
    warm = sample(model, vocab, prime="to be", length=200, temperature=1.5, top_k=3, seed=1)[0]
    assert set(warm) <= set(vocab.chars) and warm != greedy[0]



def test_cli_train_sample_eval(corpus, tmp_path, capsysbinary):
    run = tmp_path / "cli"
    code, out, err = run_cli(capsysbinary, "-q", "train", "charlm", "--data", str(corpus), "--seq-len", "8",
                             "--batch-size", "4", "--max-steps", "3", "--spec", TINY_SPEC, "--threads", "1",
                             "--device", "cpu", "--run-dir", str(run), "--random-windows")
    assert code == 0, err
    final = [line for line in out.decode().splitlines() if line.startswith("final:")]
    assert len(final) == 1 and " accuracy " in final[0] and "(validation at step 3)" in final[0]
    assert '"stateful": false' in (run / "config.json").read_text()
    code, out, err = run_cli(capsysbinary, "-q", "sample", str(run), "--prime", "to be", "--length", "20",
                             "--seed", "1", "--threads", "1")
    assert code == 0, err
    assert out.startswith(b"to be") and len(out.decode()) == len("to be") + 20 + 1
    code, out2, _ = run_cli(capsysbinary, "-q", "sample", str(run), "--prime", "to be", "--length", "20",
                            "--seed", "1", "--threads", "1")
    assert out2 == out  # reproducible with a seed
    code, out, _ = run_cli(capsysbinary, "-q", "sample", str(run), "--num-samples", "3", "--length", "10",
                           "--greedy", "--threads", "1")
    assert code == 0 and out.count(b"-" * 40) == 2
    code, out, err = run_cli(capsysbinary, "-q", "eval", str(run))
    assert code == 0 and b"bits_per_char:" in out and b"perplexity:" in out


@pytest.mark.parametrize("flag", ["--data", "--text"])  # --text as in the fonts and lines recipes
def test_non_utf8_file_in_char_mode_is_one_line_exit_2(tmp_path, capsysbinary, flag):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"hello \xff\xfe world\n" * 20)
    code, _, err = run_cli(capsysbinary, "-q", "train", "charlm", flag, str(bad), "--run-dir",
                           str(tmp_path / "r"), "--max-steps", "1")
    assert code == 2
    assert err.count("\n") == 1 and "--unit byte" in err and "bad.txt" in err
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_byte_mode_on_arbitrary_binary_input_never_prints_invalid_utf8(tmp_path, capsysbinary):
    data = tmp_path / "blob.bin"
    data.write_bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    run = tmp_path / "bytes"
    code, _, err = run_cli(capsysbinary, "-q", "train", "charlm", "--data", str(data), "--unit", "byte",
                           "--seq-len", "8", "--batch-size", "4", "--max-steps", "2", "--spec", TINY_SPEC,
                           "--threads", "1", "--device", "cpu", "--run-dir", str(run))
    assert code == 0, err
    ckpt = load_run(str(run)).ckpt
    assert Vocab.from_dict(ckpt["meta"]["vocab"]).is_bytes and ckpt["num_outputs"] == 256
    code, out, err = run_cli(capsysbinary, "-q", "sample", str(run), "--length", "300", "--temperature", "2",
                             "--seed", "0", "--threads", "1")
    assert code == 0, err
    out.decode("utf-8")  # strict: raises on invalid UTF-8
    assert b"\\x" in out  # random bytes come out escaped


def test_bad_data_config_is_one_line(corpus, tmp_path, capsysbinary):
    code, _, err = run_cli(capsysbinary, "-q", "train", "charlm", "--data", str(corpus), "--val-fraction", "1.5",
                           "--run-dir", str(tmp_path / "r"))
    assert code == 2 and "data.val_fraction" in err and err.count("\n") == 1


@pytest.mark.parametrize("cores, load, expected", [(2, 0.0, 2), (2, 0.3, 2), (2, 1.0, 1), (2, 3.5, 1), (8, 2.2, 6)])
def test_thread_default_uses_only_idle_cores(cores, load, expected):
    assert choose_threads(cores, load) == expected


def test_default_corpus_ships_with_the_package():
    cfg = CharLMDataConfig()
    assert cfg.path == ""
    from convrnn.recipes.charlm import DEFAULT_CORPUS
    assert DEFAULT_CORPUS.is_file() and DEFAULT_CORPUS.stat().st_size > 10_000


def test_utf16_text_is_one_line_saying_how_to_convert_it(tmp_path, capsysbinary):
    wide = tmp_path / "wide.txt"
    wide.write_bytes(TEXT.encode("utf-16"))  # what "Unicode" means in some Windows editors
    code, _, err = run_cli(capsysbinary, "-q", "train", "charlm", "--data", str(wide), "--run-dir",
                           str(tmp_path / "r"), "--max-steps", "1")
    assert code == 2 and err.count("\n") == 1
    assert "wide.txt" in err and "UTF-16LE" in err and "iconv -f UTF-16LE -t UTF-8" in err
    assert not (tmp_path / "r").exists()


def test_eval_scores_a_text_shorter_than_training_needs(trained, tmp_path, capsysbinary):
    short = tmp_path / "short.txt"
    short.write_text(TEXT[:40], encoding="utf-8")  # 4 characters to score; training on it needs 46
    with pytest.raises(DataError, match="40 characters are too few"):
        get_recipe("charlm").make_data(CharLMDataConfig(path=str(short), seq_len=8), TrainConfig(batch_size=4))
    code, out, err = run_cli(capsysbinary, "-q", "eval", str(trained), "--set", f"data.path={short}")
    assert code == 0, err
    assert b"bits_per_char:" in out


def test_random_windows_need_one_window_of_text_not_one_per_stream(tmp_path):
    """Random windows may overlap: 40 characters hold windows of 8 for a batch of 4 (stateful streams
    side by side would need 46); below one window and a validation part, the error names the flags."""
    short = tmp_path / "short.txt"
    short.write_text(TEXT[:40], encoding="utf-8")
    bundle = get_recipe("charlm").make_data(CharLMDataConfig(path=str(short), seq_len=8, stateful=False),
                                            TrainConfig(batch_size=4))
    assert bundle.train.batch(0, 0)["x"].shape == (4, 8)
    with pytest.raises(DataError, match=r"40 characters are too few: with --random-windows and --seq-len 36, training "
                                        r"on 90% of the text needs at least 42 characters; lower --seq-len, or"):
        get_recipe("charlm").make_data(CharLMDataConfig(path=str(short), seq_len=36, stateful=False),
                                       TrainConfig(batch_size=4))


def test_a_validation_part_of_unknown_characters_is_refused_naming_the_text(trained, tmp_path, capsysbinary):
    other = tmp_path / "greek.txt"
    other.write_text("αβγδεζηθικ" * 100, encoding="utf-8")  # no character of the model's vocabulary
    code, out, err = run_cli(capsysbinary, "-q", "eval", str(trained), "--set", f"data.path={other}")
    assert code == 2 and err.count("\n") == 1 and out == b"", err
    assert "greek.txt: its validation part (the last 10%) has 100 characters, 100 of them not in the vocabulary" in err
    # training: the validation part of a text holds only characters the rest never had
    text = tmp_path / "ends.txt"
    text.write_text(TEXT + "".join(chr(0x400 + i) for i in range(len(TEXT) // 5)), encoding="utf-8")
    with pytest.raises(DataError, match=r"ends.txt: its validation part .* not in the vocabulary, which leaves 0"):
        get_recipe("charlm").make_data(CharLMDataConfig(path=str(text), seq_len=8), TrainConfig(batch_size=4))


def test_validation_characters_the_training_part_lacks_are_named_as_such(tmp_path, caplog):
    text = tmp_path / "t.txt"
    text.write_text(TEXT * 3 + "Ω", encoding="utf-8")  # one character at the very end
    with caplog.at_level(logging.WARNING):
        get_recipe("charlm").make_data(CharLMDataConfig(path=str(text), seq_len=8), TrainConfig(batch_size=4))
    assert (f"{text}: 1 character(s) of its validation part (the last 10%) never occur in the training part, so "
            f"the model has no symbol for them; they are left out of the validation score: 'Ω' x1") in caplog.text


def test_the_embedded_text_says_that_it_stands_in(corpus, caplog):
    recipe = get_recipe("charlm")
    with caplog.at_level("INFO", logger="convrnn"):
        recipe.make_data(CharLMDataConfig(seq_len=8), TrainConfig(batch_size=4))
    assert "char corpus from the text embedded in the package (no --data given): " in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="convrnn"):
        recipe.make_data(CharLMDataConfig(path=str(corpus), seq_len=8), TrainConfig(batch_size=4))
    assert f"char corpus from {corpus}: " in caplog.text


def test_a_text_of_one_distinct_character_trains_with_a_warning(tmp_path, caplog):
    same = tmp_path / "a.txt"
    same.write_text("a" * 400, encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        get_recipe("charlm").make_data(CharLMDataConfig(path=str(same), seq_len=8), TrainConfig(batch_size=4))
    assert "only one distinct character ('a'): there is nothing to predict" in caplog.text


def test_eval_of_a_text_that_is_not_utf8_says_what_the_run_reads(trained, tmp_path, capsysbinary):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\u00e9 cr\u00e8me ".encode("latin-1") * 50)
    code, out, err = run_cli(capsysbinary, "-q", "eval", str(trained), "--set", f"data.path={latin}")
    err = err.decode() if isinstance(err, bytes) else err
    assert code == 2 and "this run models characters, so the text it scores must be UTF-8" in err, err
    assert "--unit byte" not in err


def test_raw_bytes_on_a_character_model_is_refused(trained, capsysbinary):
    code, out, err = run_cli(capsysbinary, "-q", "sample", str(trained), "--raw-bytes", "--length", "5")
    err = err.decode() if isinstance(err, bytes) else err
    assert code == 2 and "--raw-bytes: for byte-level runs (--unit byte) only" in err and not out, err
