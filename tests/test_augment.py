"""Training-line distortions: reproducible per batch, widths kept right, each one does what it says."""
# B batch, C channels (1), H height, W width
import numpy as np
import pytest
import torch

from conftest import SHARED_DATA
from convrnn.data.augment import AUGMENT_SETS, LineAugment, augment_lines, batch_rng, stroke_width
from convrnn.data.lines import (LinesDataConfig, LineSet, build_alphabet, line_augment, line_batches, line_fetcher,
                                read_lines, warp_lines)
from convrnn.errors import ConfigError
from convrnn.fields import check
from convrnn.spec import create_model
from convrnn.tasks.ctc import CTCTask

ALL_ON = LineAugment(slant=0.2, bend=1.0, tilt=1.5, stretch_x=0.1, stretch_y=0.1, stroke=0.7, contrast=0.3,
                     brightness=0.1)
SINGLE = [{"slant": 0.3}, {"bend": 1.5}, {"tilt": 3.0}, {"stretch_x": 0.2}, {"stretch_y": 0.2}, {"stroke": 1.0},
          {"contrast": 0.5}, {"brightness": 0.2}]


def _lines(n=12, height=24, seed=0) -> LineSet:
    """Lines of vertical and horizontal strokes, of several widths."""
    rng = np.random.default_rng(seed)
    images = []
    for w in rng.integers(50, 150, size=n):
        im = np.zeros((height, w), np.uint8)
        im[6:18, 4:-4:5] = 200  # vertical strokes, 1 pixel wide
        im[12, 4:-4] = 255     # a horizontal rule through the middle
        images.append(im)
    return LineSet(images, [f"t{i}" for i in range(n)], [f"n{i}" for i in range(n)])


def _fetch(aug: LineAugment, idx=(3, 1, 7, 0), seed=5, lines=None):
    return line_fetcher(lines or _lines(), seed=seed, augment=aug)(np.array(idx))


def test_the_same_batch_is_distorted_the_same_way_and_no_global_rng_is_used():
    lines = _lines()
    np.random.seed(1)
    torch.manual_seed(1)
    np_state, torch_state = np.random.get_state()[1].copy(), torch.random.get_rng_state().clone()
    first, again = _fetch(ALL_ON, lines=lines), _fetch(ALL_ON, lines=lines)
    assert torch.equal(first["x"], again["x"]) and torch.equal(first["lengths"], again["lengths"])
    assert np.array_equal(np.random.get_state()[1], np_state)  # nothing drawn from the global generators
    assert torch.equal(torch.random.get_rng_state(), torch_state)
    assert not torch.equal(first["x"], _fetch(ALL_ON, seed=6, lines=lines)["x"])  # another seed, another draw
    other_batch = _fetch(ALL_ON, idx=(3, 1, 7, 2), lines=lines)
    assert not torch.equal(first["x"][:3], other_batch["x"][:3])  # the whole batch's indices seed it
    # a resumed run fetches the batches of an epoch from a position: the same tensors come back
    src = line_batches(lines, 4, seed=2, augment=ALL_ON)
    whole = list(src.batches(1))
    for a, b in zip(whole[1:], src.batches(1, start=1)):
        assert a["ids"] == b["ids"] and torch.equal(a["x"], b["x"]) and torch.equal(a["lengths"], b["lengths"])


def test_nothing_on_leaves_the_batch_as_it_was():
    plain = line_fetcher(_lines())(np.array([3, 1, 7, 0]))
    off = _fetch(LineAugment())
    assert torch.equal(plain["x"], off["x"]) and torch.equal(plain["lengths"], off["lengths"])
    x, lengths = plain["x"], plain["lengths"]
    same_x, same_lengths = augment_lines(x, lengths, np.random.default_rng(0), LineAugment())
    assert same_x is x and same_lengths is lengths


@pytest.mark.parametrize("setting", SINGLE, ids=lambda s: next(iter(s)))
def test_each_distortion_changes_pixels_and_keeps_the_bookkeeping(setting):
    lines = _lines()
    idx = np.array([3, 1, 7, 0])
    plain = line_fetcher(lines)(idx)
    got = _fetch(LineAugment(**setting), idx=tuple(idx), lines=lines)
    x, lengths = got["x"], got["lengths"]
    assert x.shape[:3] == plain["x"].shape[:3] and x.shape[3] % 32 == 0 and x.dtype == torch.float32
    assert int(lengths.max()) <= x.shape[3] < int(lengths.max()) + 32
    assert float(x.min()) >= 0 and float(x.max()) <= 1
    assert not torch.allclose(x[..., : plain["x"].shape[3]] if x.shape[3] >= plain["x"].shape[3] else x,
                              plain["x"][..., : x.shape[3]], atol=0.02)
    for k, n in enumerate(lengths.tolist()):
        assert torch.all(x[k, :, :, n:] == 0)  # nothing past a line's valid width
    if "stretch_x" in setting:
        ratio = lengths.double() / plain["lengths"].double()
        assert torch.all((ratio - 1).abs() <= 0.2 + 1e-9) and not torch.equal(lengths, plain["lengths"])
        for k, n in enumerate(lengths.tolist()):
            assert float(x[k, 0, 12, n - 8: n].max()) > 0.3  # the rule reaches the new end of the line
    else:
        assert torch.equal(lengths, plain["lengths"]) and x.shape == plain["x"].shape


def test_slant_and_bend_alone_are_warp_lines():
    lines = _lines()
    idx = np.array([2, 5, 9])
    plain = line_fetcher(lines)(idx)
    aug = LineAugment(slant=0.2, bend=1.0)
    warped = warp_lines(plain["x"], batch_rng(7, idx), slant=0.2, bend=1.0)
    assert torch.equal(line_fetcher(lines, seed=7, augment=aug)(idx)["x"], warped)
    # the general path draws them the same way, then clears what moved past each line's end
    x, lengths = augment_lines(plain["x"], plain["lengths"], batch_rng(7, idx), aug)
    inside = torch.arange(x.shape[-1]) < plain["lengths"].view(-1, 1, 1, 1)
    assert torch.equal(x, warped * inside) and torch.equal(lengths, plain["lengths"])


def test_stroke_width_thickens_and_thins():
    x = torch.zeros(3, 1, 9, 12)
    x[:, :, 2:7, 5:7] = 1.0  # a stroke 2 pixels wide
    out = stroke_width(x, torch.tensor([1.0, -1.0, 0.5]))
    assert float(out[0].sum()) == pytest.approx(7 * 4)  # one pixel more on every side
    assert float(out[1].sum()) == pytest.approx(0)      # a 2-pixel stroke eroded by one pixel each side
    assert float(out[2].sum()) == pytest.approx((7 * 4 + 5 * 2) / 2)  # half way, grey


def test_tilt_turns_a_horizontal_rule():
    x = torch.zeros(1, 1, 24, 200)
    x[0, 0, 12, :] = 1.0
    out, _ = augment_lines(x, torch.tensor([200]), np.random.default_rng(0), LineAugment(tilt=2.0))
    angle = np.random.default_rng(0).uniform(-2.0, 2.0)  # the draw augment_lines makes
    left, right = out[0, 0, :, 20].argmax(), out[0, 0, :, 180].argmax()
    assert abs(float(right - left) - 160 * np.tan(np.deg2rad(angle))) <= 1.5


def test_config_fields_reach_the_batches_and_are_checked():
    cfg = LinesDataConfig(data="x", tilt=1.0, stretch_x=0.1, stroke=0.5)
    assert line_augment(cfg) == LineAugment(tilt=1.0, stretch_x=0.1, stroke=0.5)
    check(cfg, "data")
    for name, bad in (("tilt", 20.0), ("stretch_x", 0.7), ("stroke", 1.5), ("contrast", -0.1)):
        with pytest.raises(ConfigError, match=f"data.{name}"):
            check(LinesDataConfig(data="x", **{name: bad}), "data")


def test_the_recipe_distorts_lines_read_from_files_and_not_synthetic_ones(tmp_path):
    """``data.augment=auto``: the handwriting set for --data, none for --synthetic; a distortion given
    one by one wins over the set; a saved config re-runs with its own values."""
    from convrnn.recipes.base import get_recipe

    recipe = get_recipe("lines")
    files = recipe.config({"data.data": "lines/"}).data
    assert files.augment == "handwriting"
    assert line_augment(files) == LineAugment(**AUGMENT_SETS["handwriting"])
    synthetic = recipe.config({"data.synthetic": "digits"}).data
    assert synthetic.augment == "none" and not line_augment(synthetic).active
    mixed = recipe.config({"data.data": "lines/", "data.slant": "0", "data.brightness": "0.1"}).data
    assert line_augment(mixed) == LineAugment(**{**AUGMENT_SETS["handwriting"], "slant": 0.0, "brightness": 0.1})
    assert not line_augment(recipe.config({"data.data": "lines/", "data.augment": "none"}).data).active
    warped = recipe.config({"data.synthetic": "digits", "data.augment": "handwriting"}).data
    assert line_augment(warped) == LineAugment(**AUGMENT_SETS["handwriting"])

    saved = tmp_path / "config.json"
    cfg = recipe.config({"data.data": "lines/", "data.augment": "none", "data.tilt": "2"})
    cfg.save(saved)
    again = recipe.config(config_file=str(saved)).data
    assert line_augment(again) == LineAugment(tilt=2.0) and again.augment == "none"
    # a set named over a saved config replaces the config's distortions, except those named one by one
    handwriting = recipe.config({"data.data": "lines/"})
    handwriting.save(saved)
    off = recipe.config({"data.augment": "none"}, config_file=str(saved)).data
    assert not line_augment(off).active and off.augment == "none"
    some = recipe.config({"data.augment": "none", "data.slant": "0.1"}, config_file=str(saved)).data
    assert line_augment(some) == LineAugment(slant=0.1)
    kept = recipe.config({"train.lr": "0.001"}, config_file=str(saved)).data  # no set named: the file's own
    assert line_augment(kept) == LineAugment(**AUGMENT_SETS["handwriting"])
    with pytest.raises(ConfigError, match="data.augment"):
        check(recipe.config({"data.data": "lines/", "data.augment": "strong"}).data, "data")


COPISTE_PAGE = SHARED_DATA / "copiste" / "train" / "imp_wikitexte_0052.xml"


@pytest.mark.skipif(not COPISTE_PAGE.exists(), reason="the Copiste pages are not in the shared data folder")
def test_the_lines_of_a_real_page_are_learnt_in_seconds():
    """From page XML to CTC: a small crnn learns to read the 15 handwritten lines of one Copiste page.

    Lines 16 pixels high keep it short: it reads none of them at first (CER 1), about 0.02 to 0.08 of
    the characters wrong after 100 steps and none after 125 to 150; 150 steps take about 25 s on two
    threads of a 2-core AMD EPYC (40 s on one)."""
    torch.manual_seed(0)
    lines = read_lines(str(COPISTE_PAGE), height=16, workers=1)
    assert len(lines) == 15
    task = CTCTask(build_alphabet(lines.texts))
    model = create_model("crnn:filters=16,hidden_size=64", num_outputs=task.num_outputs, input_shape=(1, 16, None))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batch = next(iter(line_batches(lines, 16, seed=0).batches(0)))  # all 15 lines
    for _ in range(150):
        loss = task.loss(model.run(batch["x"], batch["lengths"], need_state=False), batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    model.eval()
    metrics = task.new_metrics()
    with torch.no_grad():
        metrics.update(model.run(batch["x"], batch["lengths"], need_state=False), batch)
    assert metrics.compute()["cer"] < 0.1, metrics.compute()
