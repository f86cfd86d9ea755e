"""RegressTask, ValueClassifyTask and SumOfValuesTask: losses and metrics against hand-computed examples."""
import itertools
import math

import pytest
import torch

from convrnn.errors import DataError
from convrnn.layers.base import ModelOutput
from convrnn.tasks.values import RegressTask, SumOfValuesTask, ValueClassifyTask, sum_log_distribution


def batch_of(y, lengths, mask=None):
    y = torch.tensor(y)
    b = {"y_int": y, "y": y.float(), "lengths": torch.tensor(lengths), "x": torch.zeros(len(lengths), 1)}
    if mask is not None:
        b["mask"] = torch.tensor(mask)
    return b


def test_sequence_metrics_by_hand():
    task = RegressTask()  # mean 0, std 1: the output is the value
    out = ModelOutput(torch.tensor([[3.2], [7.0], [10.6], [0.4]]))
    batch = batch_of([3, 8, 10, 0], [1, 2, 2, 1])
    m = task.new_metrics()
    m.update(out, batch)
    r = m.compute()
    errs = [0.2, -1.0, 0.6, 0.4]
    assert r["mse"] == pytest.approx(sum(e * e for e in errs) / 4)
    assert r["mae"] == pytest.approx(sum(abs(e) for e in errs) / 4)
    assert r["exact"] == pytest.approx(2 / 4)  # 3.2 -> 3 yes, 7 vs 8 no, 10.6 -> 11 no, 0.4 -> 0 yes
    assert r["exact_len1"] == 1.0 and r["exact_len2"] == 0.0
    assert r["mse_len2"] == pytest.approx((1.0 + 0.36) / 2)
    assert r["mae_len1"] == pytest.approx(0.3)
    assert r["loss"] == pytest.approx(r["mse"])


def test_metrics_accumulate_over_batches_like_one_batch():
    task = RegressTask(target_mean=5.0, target_std=2.0)
    ys, outs, lens = [1, 4, 9, 6, 2], torch.randn(5, 1, generator=torch.Generator().manual_seed(0)), [1, 2, 3, 2, 1]
    whole = task.new_metrics()
    whole.update(ModelOutput(outs), batch_of(ys, lens))
    split = task.new_metrics()
    split.update(ModelOutput(outs[:2]), batch_of(ys[:2], lens[:2]))
    split.update(ModelOutput(outs[2:]), batch_of(ys[2:], lens[2:]))
    a, b = whole.compute(), split.compute()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k]), k


def test_standardised_loss_and_values():
    task = RegressTask(target_mean=10.0, target_std=4.0)
    out = ModelOutput(torch.tensor([[0.5], [-1.0]]))
    batch = batch_of([12, 6], [1, 1])
    assert task.values(out).tolist() == [12.0, 6.0]
    assert float(task.loss(out, batch)) == pytest.approx(0.0)
    out2 = ModelOutput(torch.tensor([[1.5], [-1.0]]))  # first is 16 instead of 12: z error 1
    assert float(task.loss(out2, batch)) == pytest.approx(0.5)


def test_per_step_mask_keeps_padding_out():
    task = RegressTask(per_step=True)
    # two sequences: lengths 3 and 1; padding outputs are wild and must not count
    out = ModelOutput(torch.tensor([[[1.0], [3.0], [6.4]], [[5.0], [99.0], [-50.0]]]))
    batch = batch_of([[1, 3, 6], [5, 0, 0]], [3, 1], mask=[[True, True, True], [True, False, False]])
    assert float(task.loss(out, batch)) == pytest.approx(0.16 / 4)
    m = task.new_metrics()
    m.update(out, batch)
    r = m.compute()
    assert r["mse"] == pytest.approx(0.16 / 4)
    assert r["exact"] == 1.0 and r["exact_step"] == 1.0
    assert r["mse_len3"] == pytest.approx(0.16 / 3) and r["mse_len1"] == 0.0
    wrong = ModelOutput(torch.tensor([[[1.0], [2.0], [6.0]], [[5.0], [0.0], [0.0]]]))
    m = task.new_metrics()
    m.update(wrong, batch)
    r = m.compute()
    assert r["exact"] == 0.5 and r["exact_step"] == pytest.approx(3 / 4)


def test_value_classify_argmax_and_ignored_targets():
    task = ValueClassifyTask(5)
    logits = torch.full((3, 5), -5.0)
    logits[0, 2] = logits[1, 4] = logits[2, 1] = 5.0
    batch = batch_of([2, 3, 7], [1, 2, 3])  # 7 cannot be represented: ignored by the loss, counted wrong
    out = ModelOutput(logits)
    assert task.values(out).tolist() == [2, 4, 1]
    expected = (torch.nn.functional.cross_entropy(logits[:2], torch.tensor([2, 3]))).item()
    assert float(task.loss(out, batch)) == pytest.approx(expected)
    m = task.new_metrics()
    m.update(out, batch)
    r = m.compute()
    assert r["exact"] == pytest.approx(1 / 3)
    assert r["mse"] == pytest.approx((0 + 1 + 36) / 3)
    assert r["exact_len1"] == 1.0 and r["exact_len3"] == 0.0


def test_value_classify_all_ignored_gives_zero_loss_with_graph():
    task = ValueClassifyTask(3)
    logits = torch.zeros(2, 3, requires_grad=True)
    loss = task.loss(ModelOutput(logits), batch_of([5, 9], [2, 2]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and math.isfinite(float(logits.grad.sum()))


def test_shape_errors_name_expected_and_actual():
    with pytest.raises(DataError, match=r"expected a regression output \(B, 1\), got shape \(2, 3\)"):
        RegressTask().values(ModelOutput(torch.zeros(2, 3)))
    with pytest.raises(DataError, match="V = 4"):
        ValueClassifyTask(4).values(ModelOutput(torch.zeros(2, 3)))
    with pytest.raises(DataError, match="target_std"):
        RegressTask(target_std=0.0)


def test_sum_pool_adds_per_step_outputs_of_valid_steps_only():
    from convrnn.layers.heads import Regress

    torch.manual_seed(0)
    head = Regress(3, 1, pool="sum")
    x = torch.randn(2, 4, 3)
    lengths = torch.tensor([4, 2])
    y = head(x, lengths)
    per_step = head.linear(x)  # (B, T, 1)
    assert torch.allclose(y[0], per_step[0].sum(0)) and torch.allclose(y[1], per_step[1, :2].sum(0))
    noisy = x.clone()
    noisy[1, 2:] = 1e6  # padding never leaks in
    assert torch.equal(head(noisy, lengths), y)
    assert torch.allclose(head(x), per_step.sum(1))  # no lengths: every step
    assert head.output_shape((None, None, 3)) == (None, 1)


def test_digits_preset_sums_per_step_values_only_for_sums():
    from convrnn.spec.presets import get_preset

    assert get_preset("digits", head="reg").spec.endswith("gru:64 reg:sum")  # op defaults to sum
    assert get_preset("digits", head="reg", op="product").spec.endswith("gru:64 reg:last")
    assert get_preset("digits", head="reg", op="sum", per_step=True).spec.endswith("reg:seq")
    assert get_preset("digits").spec.endswith("gru:64 reg:seq")  # head=auto: a distribution per digit for sums


def brute_force_sum_probs(p: torch.Tensor, length: int, size: int) -> torch.Tensor:
    """P(sum = s) by enumerating every combination of per-step values (exponential; tests only)."""
    ref = torch.zeros(size, dtype=p.dtype)
    for combo in itertools.product(range(p.shape[-1]), repeat=length):
        ref[sum(combo)] += torch.prod(torch.stack([p[t, c] for t, c in enumerate(combo)]))
    return ref


def test_sum_distribution_is_the_convolution_of_the_steps_and_ignores_padding():
    torch.manual_seed(0)
    logp = torch.randn(3, 4, 5, dtype=torch.float64).log_softmax(-1)  # B=3, T=4, values 0..4
    lengths = torch.tensor([4, 2, 1])
    dist = sum_log_distribution(logp, lengths)
    assert dist.shape == (3, 4 * 4 + 1)
    for b in range(3):
        ref = brute_force_sum_probs(logp[b].exp(), int(lengths[b]), 17)
        torch.testing.assert_close(dist[b].exp(), ref)
    # a very confident step never underflows to -inf where the sum is possible
    sharp = torch.full((1, 3, 10), -200.0, dtype=torch.float64)
    sharp[:, :, 9] = 0.0
    d = sum_log_distribution(sharp.log_softmax(-1), None)
    assert torch.isfinite(d).all() and int(d.argmax()) == 27


def test_a_batch_of_mixed_lengths_gives_finite_gradients():
    """Steps past the end of a shorter sequence hold impossible sums only: their gradient must still be
    a number, or every batch of mixed lengths is skipped as non-finite."""
    torch.manual_seed(0)
    logits = torch.randn(3, 4, 10, requires_grad=True)
    dist = sum_log_distribution(logits.log_softmax(-1), torch.tensor([4, 1, 2]))
    loss = -dist[torch.arange(3), torch.tensor([20, 3, 9])].sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    assert logits.grad[1, 1:].abs().max() == 0 and logits.grad[2, 2:].abs().max() == 0  # padding learns nothing


def test_sum_of_values_loss_values_and_metrics():
    task = SumOfValuesTask(3)  # values 0, 1, 2
    logits = torch.full((2, 2, 3), -30.0)
    logits[0, 0, 2] = logits[0, 1, 1] = 30.0  # sequence 0: surely 2 + 1
    logits[1, 0, 0] = 30.0  # sequence 1: one step, surely 0; step 2 is padding (anything)
    logits[1, 1] = torch.tensor([0.0, 0.0, 30.0])
    out = ModelOutput(logits.requires_grad_(), torch.tensor([2, 1]))
    assert task.values(out).tolist() == pytest.approx([3.0, 0.0], abs=1e-6)
    right = task.loss(out, batch_of([3, 0], [2, 1]))
    wrong = task.loss(out, batch_of([4, 1], [2, 1]))
    assert right.item() < 1e-6 and wrong.item() > 20
    wrong.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad[1, 1].abs().max() == 0  # padding gets no gradient
    m = task.new_metrics()
    m.update(out, batch_of([3, 1], [2, 1]))
    r = m.compute()
    assert r["exact"] == pytest.approx(0.5) and r["mse"] == pytest.approx(0.5, abs=1e-5)
    with pytest.raises(DataError, match="reg:seq,3"):
        task.loss(ModelOutput(torch.zeros(2, 1)), batch_of([3, 0], [2, 1]))
