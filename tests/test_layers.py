"""Layers against slow obvious references, and output_shape against real forward shapes."""
# B batch, T time steps, C channels, H height, W width, F features
import pytest
import torch
from torch import nn

from convrnn.layers import (BatchNorm, Blocks, Classify, Columns, Conv, Dense, Dropout, Embedding, Flatten, OneHot,
                            Pool, Project, Recurrent, Regress, TimeDistributed, pool_steps)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_time_distributed_equals_loop_over_steps_with_gradients():
    conv = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh())
    x = torch.randn(2, 4, 2, 5, 6, requires_grad=True)
    y = TimeDistributed(conv)(x)
    (y * torch.arange(y.numel()).view_as(y).sin()).sum().backward()
    fast_grad_x, fast_grad_w = x.grad.clone(), conv[0].weight.grad.clone()

    x.grad, conv[0].weight.grad = None, None
    ref = torch.stack([conv(x[:, t]) for t in range(x.shape[1])], dim=1)
    (ref * torch.arange(ref.numel()).view_as(ref).sin()).sum().backward()
    torch.testing.assert_close(y, ref)
    torch.testing.assert_close(fast_grad_x, x.grad)
    torch.testing.assert_close(fast_grad_w, conv[0].weight.grad)


def test_time_distributed_infers_shape_of_plain_modules_by_dry_run():
    td = TimeDistributed(nn.Conv2d(2, 3, 3))
    assert td.output_shape((None, 4, 2, 8, 9)) == (None, 4, 3, 6, 7)
    assert tuple(td(torch.randn(2, 4, 2, 8, 9)).shape) == (2, 4, 3, 6, 7)
    with pytest.raises(ValueError, match="cannot infer"):
        td.output_shape((None, 4, 2, 8, None))


@pytest.mark.parametrize("width,stride", [(8, None), (8, 4), (5, 3), (3, 7), (16, 1), (64, None)])
def test_blocks_pixel_exact(width, stride):
    x = torch.randn(2, 3, 4, 64)
    y = Blocks(width, stride)(x)
    step = stride or width
    starts = range(0, 64 - width + 1, step)
    ref = torch.stack([x[..., s:s + width] for s in starts], dim=1)
    assert torch.equal(y, ref)


def test_blocks_lengths_and_errors():
    blocks = Blocks(8, 4)
    assert blocks.output_lengths(torch.tensor([8, 11, 12, 64, 3])).tolist() == [1, 1, 2, 15, 1]
    with pytest.raises(ValueError, match="width 8"):
        blocks.output_shape((None, 1, 16, 7))
    with pytest.raises(ValueError, match="at least 8"):
        blocks(torch.randn(1, 1, 4, 7))


def test_columns_exact_against_loop():
    x = torch.randn(2, 3, 4, 5)
    y = Columns()(x)
    ref = torch.stack([x[:, :, :, w].reshape(2, 12) for w in range(5)], dim=1)
    assert torch.equal(y, ref)


def _set_same_weights(layer: Recurrent, ref: nn.Module) -> None:
    ref.load_state_dict({k.removeprefix("rnn."): v for k, v in layer.state_dict().items()})


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 1), (False, 2), (True, 3)])
def test_recurrent_equals_torch(mode, bidirectional, num_layers):
    layer = Recurrent(4, 5, mode=mode, num_layers=num_layers, bidirectional=bidirectional)
    ref = (nn.LSTM if mode == "lstm" else nn.GRU)(4, 5, num_layers=num_layers, bidirectional=bidirectional,
                                                  batch_first=True)
    _set_same_weights(layer, ref)
    x = torch.randn(3, 6, 4)
    y, state = layer(x)
    y_ref, state_ref = ref(x)
    torch.testing.assert_close(y, y_ref)
    torch.testing.assert_close(state, state_ref)
    assert layer.output_shape((None, None, 4)) == (None, None, 5 * (2 if bidirectional else 1))


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_recurrent_packed_lengths_equal_unpadded_runs(mode, bidirectional):
    layer = Recurrent(3, 4, mode=mode, num_layers=2, bidirectional=bidirectional)
    lengths = torch.tensor([5, 2, 7])
    x = torch.randn(3, 7, 3)
    y, state = layer(x, lengths)
    assert tuple(y.shape) == (3, 7, 4 * (2 if bidirectional else 1))
    h = state[0] if mode == "lstm" else state
    for b, n in enumerate(lengths.tolist()):
        alone, alone_state = layer(x[b:b + 1, :n])
        torch.testing.assert_close(y[b, :n], alone[0])
        assert torch.count_nonzero(y[b, n:]) == 0
        alone_h = alone_state[0] if mode == "lstm" else alone_state
        torch.testing.assert_close(h[:, b], alone_h[:, 0])


@pytest.mark.parametrize("mode", ["lstm", "gru"])
@pytest.mark.parametrize("bidirectional,num_layers", [(False, 1), (True, 2)])
def test_recurrent_without_state_equals_packed_run(mode, bidirectional, num_layers):
    """need_state=False runs unequal lengths unpacked (fused kernels); outputs and gradients are the
    packed run's, from zero or a given initial state, and padding stays zero."""
    torch.manual_seed(0)
    layer = Recurrent(3, 4, mode=mode, num_layers=num_layers, bidirectional=bidirectional).double()
    x = torch.randn(3, 7, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 7])
    h0 = torch.randn(num_layers * (2 if bidirectional else 1), 3, 4, dtype=torch.float64)
    weight = torch.randn(3, 7, 4 * (2 if bidirectional else 1), dtype=torch.float64)
    for state in (None, (h0, h0.flip(0)) if mode == "lstm" else h0):
        packed, _ = layer(x, lengths, state)
        fast, fast_state = layer(x, lengths, state, need_state=False)
        assert fast_state is None
        torch.testing.assert_close(fast, packed, atol=1e-12, rtol=0)
        wanted = [x, *layer.parameters()]
        grads = torch.autograd.grad((packed * weight).sum(), wanted)
        fast_grads = torch.autograd.grad((fast * weight).sum(), wanted)
        for g, f in zip(grads, fast_grads):
            torch.testing.assert_close(f, g, atol=1e-12, rtol=0)
    assert torch.count_nonzero(fast[1, 2:]) == 0


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_recurrent_state_carried_over_two_windows_equals_one_run(mode):
    layer = Recurrent(3, 4, mode=mode, num_layers=2)
    x = torch.randn(2, 9, 3)
    whole, whole_state = layer(x)
    first, state = layer(x[:, :4])
    second, last_state = layer(x[:, 4:], state=state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)
    torch.testing.assert_close(last_state, whole_state)


@pytest.mark.parametrize("mode", ["lstm", "gru"])
def test_weight_dropout_masks_the_recurrent_matrices_once_per_batch(mode):
    """Training with wdrop equals a plain stack whose hidden-to-hidden matrices carry one fixed mask
    (the same at every step); evaluation and the input matrices are untouched; gradients reach the weights."""
    torch.manual_seed(0)
    layer = Recurrent(3, 4, mode=mode, num_layers=2, weight_dropout=0.5)
    x, lengths = torch.randn(2, 7, 3), torch.tensor([7, 4])
    plain = (nn.LSTM if mode == "lstm" else nn.GRU)(3, 4, num_layers=2, batch_first=True)
    plain.load_state_dict(layer.rnn.state_dict())
    layer.eval()
    torch.testing.assert_close(layer(x)[0], plain(x)[0])
    layer.train()
    torch.manual_seed(1)
    y, _ = layer(x, lengths)
    torch.manual_seed(1)  # the unpacked path draws the same masks
    torch.testing.assert_close(layer(x, lengths, need_state=False)[0], y)
    torch.manual_seed(1)  # the same draws, in the layer's order (named_parameters), outside it
    with torch.no_grad():
        for name, w in plain.named_parameters():
            if name.startswith("weight_hh"):
                w.copy_(nn.functional.dropout(w, 0.5))
    expected = layer.__class__(3, 4, mode=mode, num_layers=2)
    expected.rnn = plain
    torch.testing.assert_close(y, expected(x, lengths)[0])
    y.sum().backward()
    assert layer.rnn.weight_hh_l0.grad.abs().sum() > 0 and layer.rnn.weight_ih_l0.grad.abs().sum() > 0


@pytest.mark.parametrize("head", [
    lambda: Classify(6, 3, pool="last"), lambda: Classify(6, 3, pool="mean"), lambda: Classify(6, 3, pool="max"),
    lambda: Classify(6, 3, pool="last", bidirectional_split=True), lambda: Regress(6, 2, pool="mean"),
    lambda: Regress(6, 2, pool="max"),
])
def test_heads_ignore_padding(head):
    layer = head()
    lengths = torch.tensor([3, 5, 1])
    x = torch.randn(3, 5, 6)
    y = layer(x, lengths)
    perturbed = x.clone()
    for b, n in enumerate(lengths.tolist()):
        perturbed[b, n:] = 1e6
    torch.testing.assert_close(layer(perturbed, lengths), y)
    # and the valid steps do matter
    changed = x.clone()
    changed[:, 0] += 1.0
    assert not torch.allclose(layer(changed, lengths), y)


def test_regress_seq_masks_nothing_but_keeps_lengths():
    layer = Regress(6, 2, pool="seq")
    lengths = torch.tensor([2, 4])
    y = layer(torch.randn(2, 4, 6), lengths)
    assert tuple(y.shape) == (2, 4, 2)
    assert layer.output_lengths(lengths) is lengths


def test_pooling_matches_reference():
    x = torch.randn(2, 4, 6)
    lengths = torch.tensor([4, 2])
    torch.testing.assert_close(pool_steps(x, lengths, "last")[1], x[1, 1])
    torch.testing.assert_close(pool_steps(x, lengths, "mean")[1], x[1, :2].mean(0))
    torch.testing.assert_close(pool_steps(x, lengths, "max")[1], x[1, :2].amax(0))
    split = pool_steps(x, lengths, "last", bidirectional_split=True)
    torch.testing.assert_close(split[1], torch.cat([x[1, 1, :3], x[1, 0, 3:]]))


def test_batch_norm_on_channels_last_images_equals_contiguous_and_keeps_the_layout():
    x = torch.randn(4, 3, 5, 6)
    plain, last = BatchNorm(3), BatchNorm(3)
    last.load_state_dict(plain.state_dict())
    a = x.clone().requires_grad_()
    b = x.clone().contiguous(memory_format=torch.channels_last).requires_grad_()
    ya, yb = plain(a), last(b)
    assert yb.is_contiguous(memory_format=torch.channels_last) and not yb.is_contiguous()
    torch.testing.assert_close(ya, yb)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(a.grad, b.grad)
    for p, q in zip(plain.parameters(), last.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    for key, value in plain.state_dict().items():  # running mean, variance (unbiased, over B*H*W) and count
        torch.testing.assert_close(value, last.state_dict()[key])


def test_conv_same_padding_keeps_size_for_even_and_odd_kernels():
    for k in (1, 2, 3, 4, 5):
        conv = Conv(1, 2, k, padding="same")
        assert tuple(conv(torch.randn(1, 1, 7, 10)).shape) == (1, 2, 7, 10)


def test_conv_and_pool_lengths_follow_their_arithmetic():
    lengths = torch.tensor([9, 10, 17])
    for layer in (Conv(1, 1, (3, 4), stride=(1, 2), padding="same"), Conv(1, 1, 3, stride=2, padding="valid"),
                  Pool(2), Pool((2, 3), stride=(2, 2), mode="avg")):
        expected = [layer.output_shape((1, 1, 8, int(n)))[-1] for n in lengths]
        assert layer.output_lengths(lengths).tolist() == expected
        for n, e in zip(lengths.tolist(), expected):
            assert layer(torch.randn(1, 1, 8, n)).shape[-1] == e


def test_flatten_onehot_embedding_and_dense_values():
    x = torch.randn(2, 3, 4, 5, 6)
    assert torch.equal(Flatten()(x), x.reshape(2, 3, 120))
    ids = torch.tensor([[0, 2, 1]])
    assert torch.equal(OneHot(3)(ids), torch.eye(3)[ids])
    emb = Embedding(3, 4)
    assert torch.equal(emb(ids), emb.weight[ids])
    dense = Dense(4, 2, activation="tanh")
    seq = torch.randn(2, 3, 4)
    torch.testing.assert_close(dense(seq)[1, 2], torch.tanh(dense.linear(seq[1, 2])))


def test_projection_tie_shares_the_embedding_matrix():
    emb, head = Embedding(7, 4), Project(4, 7)
    head.tie(emb)
    assert head.linear.weight is emb.weight
    with pytest.raises(ValueError, match="cannot tie"):
        Project(5, 7).tie(emb)


def _ids(shape):
    return lambda: torch.randint(0, 5, shape)


# (layer factory, symbolic input shape, concrete input factory, forward kwargs)
SHAPE_CASES = [
    ("blocks", lambda: Blocks(4, 3), (None, 2, 5, 13), lambda: torch.randn(2, 2, 5, 13)),
    ("blocks-varwidth", lambda: Blocks(4), (None, 2, 5, None), lambda: torch.randn(2, 2, 5, 13)),
    ("cols", lambda: Columns(), (None, 2, 5, None), lambda: torch.randn(2, 2, 5, 9)),
    ("conv-same", lambda: Conv(2, 3, (4, 3)), (None, 2, 7, None), lambda: torch.randn(2, 2, 7, 9)),
    ("conv-stride", lambda: Conv(2, 3, 3, stride=(2, 3)), (None, 2, 7, 11), lambda: torch.randn(2, 2, 7, 11)),
    ("conv-valid", lambda: Conv(2, 3, 3, padding="valid"), (None, 2, 7, 11), lambda: torch.randn(2, 2, 7, 11)),
    ("conv-int", lambda: Conv(2, 3, 3, padding=2), (None, 2, 7, 11), lambda: torch.randn(2, 2, 7, 11)),
    ("pool", lambda: Pool(2), (None, 2, 7, 11), lambda: torch.randn(2, 2, 7, 11)),
    ("pool-avg", lambda: Pool((3, 2), stride=(1, 2), mode="avg"), (None, 2, 7, None), lambda: torch.randn(2, 2, 7, 9)),
    ("bn-image", lambda: BatchNorm(2), (None, 2, 7, 11), lambda: torch.randn(2, 2, 7, 11)),
    ("bn-seq", lambda: BatchNorm(4), (None, None, 4), lambda: torch.randn(2, 3, 4)),
    ("bn-vector", lambda: BatchNorm(4), (None, 4), lambda: torch.randn(2, 4)),
    ("dropout", lambda: Dropout(0.5), (None, None, 4), lambda: torch.randn(2, 3, 4)),
    ("flatten-seq", lambda: Flatten(), (None, None, 2, 3, 4), lambda: torch.randn(2, 5, 2, 3, 4)),
    ("flatten-image", lambda: Flatten(), (None, 2, 3, 4), lambda: torch.randn(2, 2, 3, 4)),
    ("dense-seq", lambda: Dense(4, 6, "relu"), (None, None, 4), lambda: torch.randn(2, 3, 4)),
    ("dense-vector", lambda: Dense(4, 6), (None, 4), lambda: torch.randn(2, 4)),
    ("embedding", lambda: Embedding(5, 3), (None, None), _ids((2, 4))),
    ("onehot", lambda: OneHot(5), (None, None), _ids((2, 4))),
    ("td-conv", lambda: TimeDistributed(Conv(2, 3, 3)), (None, None, 2, 5, 6), lambda: torch.randn(2, 3, 2, 5, 6)),
    ("td-pool", lambda: TimeDistributed(Pool(2)), (None, 4, 2, 5, 6), lambda: torch.randn(2, 4, 2, 5, 6)),
    ("lstm", lambda: Recurrent(4, 3, bidirectional=True, num_layers=2), (None, None, 4), lambda: torch.randn(2, 5, 4)),
    ("gru", lambda: Recurrent(4, 3, mode="gru"), (None, 5, 4), lambda: torch.randn(2, 5, 4)),
    ("classify-seq", lambda: Classify(4, 3, pool="max"), (None, None, 4), lambda: torch.randn(2, 5, 4)),
    ("classify-vector", lambda: Classify(4, 3), (None, 4), lambda: torch.randn(2, 4)),
    ("regress-seq", lambda: Regress(4, 2, pool="seq"), (None, None, 4), lambda: torch.randn(2, 5, 4)),
    ("regress-last", lambda: Regress(4), (None, None, 4), lambda: torch.randn(2, 5, 4)),
    ("project", lambda: Project(4, 7), (None, None, 4), lambda: torch.randn(2, 5, 4)),
]


def _compatible(symbolic, actual):
    return len(symbolic) == len(actual) and all(s is None or s == a for s, a in zip(symbolic, actual))


@pytest.mark.parametrize("name,factory,symbolic,make_input", SHAPE_CASES, ids=[c[0] for c in SHAPE_CASES])
def test_output_shape_matches_forward(name, factory, symbolic, make_input):
    layer = factory().eval()
    x = make_input()
    out = layer(x, None, None)[0] if layer.stateful else layer(x)
    concrete = layer.output_shape(tuple(x.shape))
    assert concrete == tuple(out.shape)
    predicted = layer.output_shape(symbolic)
    assert _compatible(predicted, tuple(out.shape)), (predicted, tuple(out.shape))
    # None dims stay None, known dims stay known
    assert predicted[0] is None
