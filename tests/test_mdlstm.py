# B batch, C channels, H height, W width, N hidden units, T time steps
import pytest
import torch
from torch import nn

from convrnn.layers.mdlstm import Collapse, MDLSTM2d, SeparableLSTM2d, Tile


# Start corners as documented: top-left, top-right, bottom-left, bottom-right, as (flip H, flip W).
CORNERS = ((False, False), (False, True), (True, False), (True, True))


def reference_mdlstm(m: MDLSTM2d, x: torch.Tensor) -> torch.Tensor:
    """The obvious per-cell 2-D LSTM: a double loop over (i, j) for each direction, by mirroring."""
    b, _, height, width = x.shape
    n = m.hidden_size
    outs = []
    for k, (flip_h, flip_w) in enumerate(CORNERS[:m.directions]):
        dims = [d for d, f in ((2, flip_h), (3, flip_w)) if f]
        xk = x.flip(dims) if dims else x
        zero = x.new_zeros(b, n)
        h, c = {}, {}
        for i in range(height):
            for j in range(width):
                h_left, c_left = h.get((i, j - 1), zero), c.get((i, j - 1), zero)
                h_up, c_up = h.get((i - 1, j), zero), c.get((i - 1, j), zero)
                z = (xk[:, :, i, j] @ m.weight_ih[k].T + h_left @ m.weight_hh_left[k].T
                     + h_up @ m.weight_hh_up[k].T + m.bias[k])
                gi, gfl, gfu, go, gg = z.chunk(5, dim=1)
                c[i, j] = (torch.sigmoid(gfl) * c_left + torch.sigmoid(gfu) * c_up
                           + torch.sigmoid(gi) * torch.tanh(gg))
                h[i, j] = torch.sigmoid(go) * torch.tanh(c[i, j])
        rows = [torch.stack([h[i, j] for j in range(width)], dim=-1) for i in range(height)]
        hk = torch.stack(rows, dim=-2)  # H x (B, N, W) -> (B, N, H, W)
        outs.append(hk.flip(dims) if dims else hk)
    return torch.cat(outs, dim=1) if m.combine == "concat" else torch.stack(outs).sum(0)


@pytest.mark.parametrize("directions", [1, 2, 4])
@pytest.mark.parametrize("height,width", [(4, 5), (6, 3), (2, 7), (3, 3)])
def test_anti_diagonal_matches_per_cell_reference(directions, height, width):
    torch.manual_seed(0)
    m = MDLSTM2d(3, 3, directions=directions).double()
    x = torch.randn(2, 3, height, width, dtype=torch.float64, requires_grad=True)
    fast = m(x)
    slow = reference_mdlstm(m, x)
    assert fast.shape == (2, 3 * directions, height, width)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)

    upstream = torch.randn_like(fast)
    params = [x, *m.parameters()]
    g_fast = torch.autograd.grad(fast, params, upstream)
    g_slow = torch.autograd.grad(slow, params, upstream)
    for name, a, b in zip(["input", "weight_ih", "weight_hh_left", "weight_hh_up", "bias"], g_fast, g_slow):
        assert a.abs().sum() > 0, name
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=f"gradient of {name}")


def test_sum_combine_matches_reference():
    torch.manual_seed(1)
    m = MDLSTM2d(2, 4, directions=4, combine="sum").double()
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    y = m(x)
    assert y.shape == (1, 4, 3, 4)
    torch.testing.assert_close(y, reference_mdlstm(m, x), atol=1e-5, rtol=0)


def test_directions_differ():
    """Each direction has its own weights and sees a different context: outputs differ."""
    torch.manual_seed(2)
    m = MDLSTM2d(2, 3, directions=4)
    y = m(torch.randn(1, 2, 4, 4)).view(1, 4, 3, 4, 4)
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.allclose(y[:, a], y[:, b])


def _lstm_to_mdlstm_gates(w: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """nn.LSTM gate blocks (i, f, g, o) -> MDLSTM2d blocks (i, f_left, f_up, o, g)."""
    i, f, g, o = w.chunk(4, dim=0)
    return torch.cat([i, f, up, o, g], dim=0)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_single_row_reduces_to_nn_lstm(bidirectional):
    """With H=1 the upper neighbour is always zero: the 2-D LSTM is a 1-D LSTM (forget = f_left).
    Two directions (top-left, top-right) on one row are a bidirectional LSTM."""
    torch.manual_seed(3)
    c, n, w = 3, 4, 6
    lstm = nn.LSTM(c, n, batch_first=True, bidirectional=bidirectional).double()
    m = MDLSTM2d(c, n, directions=2 if bidirectional else 1).double()
    with torch.no_grad():
        for k, suffix in enumerate(["", "_reverse"][:m.directions]):
            # The f_up blocks only ever multiply the zero upper cell state: any values do.
            m.weight_ih[k] = _lstm_to_mdlstm_gates(getattr(lstm, "weight_ih_l0" + suffix),
                                                   torch.randn(n, c, dtype=torch.float64))
            m.weight_hh_left[k] = _lstm_to_mdlstm_gates(getattr(lstm, "weight_hh_l0" + suffix),
                                                        torch.randn(n, n, dtype=torch.float64))
            bias = getattr(lstm, "bias_ih_l0" + suffix) + getattr(lstm, "bias_hh_l0" + suffix)
            m.bias[k] = _lstm_to_mdlstm_gates(bias, torch.randn(n, dtype=torch.float64))
    x = torch.randn(2, w, c, dtype=torch.float64)
    expected, _ = lstm(x)  # (B, W, D*N)
    got = m(x.transpose(1, 2)[:, :, None, :])  # (B, W, C) -> (B, C, 1, W) -> (B, D*N, 1, W)
    torch.testing.assert_close(got[:, :, 0, :].transpose(1, 2), expected, atol=1e-10, rtol=0)


@pytest.mark.parametrize("layer", [
    lambda: MDLSTM2d(2, 3, directions=4),
    lambda: SeparableLSTM2d(2, 3),
])
def test_lengths_make_valid_outputs_independent_of_padding(layer):
    torch.manual_seed(4)
    m = layer().double()
    short = torch.randn(1, 2, 3, 4, dtype=torch.float64)
    padded = torch.cat([short, torch.randn(1, 2, 3, 3, dtype=torch.float64)], dim=3)  # garbage padding
    batch = torch.cat([padded, torch.randn(1, 2, 3, 7, dtype=torch.float64)])
    y = m(batch, torch.tensor([4, 7]))
    torch.testing.assert_close(y[:1, :, :, :4], m(short), atol=1e-10, rtol=0)
    torch.testing.assert_close(y[1:], m(batch[1:]), atol=1e-10, rtol=0)
    # Without lengths the right-to-left scans start in the padding and the valid outputs change.
    assert not torch.allclose(m(batch)[:1, :, :, :4], m(short))


def test_separable_is_rows_then_columns():
    torch.manual_seed(5)
    m = SeparableLSTM2d(2, 3)
    x = torch.randn(2, 2, 4, 5)
    rows, _ = m.rows(x[:, :, 1, :].transpose(1, 2))  # row 1 of each image: (B, W, C) -> (B, W, 2N)
    mid = torch.stack([m.rows(x[:, :, i, :].transpose(1, 2))[0] for i in range(4)], dim=1)  # (B, H, W, 2N)
    col, _ = m.cols(mid[:, :, 2, :])  # column 2: (B, H, 2N)
    y = m(x)
    torch.testing.assert_close(y[:, :, :, 2], col.transpose(1, 2))


def test_tile_is_space_to_depth_with_padding():
    x = torch.arange(2 * 1 * 3 * 5, dtype=torch.float32).view(2, 1, 3, 5)
    y = Tile(2, 2)(x)
    assert y.shape == (2, 4, 2, 3)
    # Output pixel (0, 1) holds input pixels (0..1, 2..3), channel order (c, dy, dx).
    torch.testing.assert_close(y[0, :, 0, 1], torch.tensor([2.0, 3.0, 7.0, 8.0]))
    # Bottom-right output pixel: only (2, 4) is real, the rest is zero padding.
    torch.testing.assert_close(y[0, :, 1, 2], torch.tensor([14.0, 0.0, 0.0, 0.0]))
    assert Tile(2, 2).output_lengths(torch.tensor([5, 4, 1])).tolist() == [3, 2, 1]


@pytest.mark.parametrize("mode,expected", [("sum", [3.0, 5.0]), ("mean", [1.5, 2.5]), ("max", [2.0, 3.0])])
def test_collapse_modes(mode, expected):
    x = torch.tensor([[[[1.0, 2.0], [2.0, 3.0]]]])  # (B=1, C=1, H=2, W=2)
    y = Collapse(mode)(x)
    assert y.shape == (1, 2, 1)
    assert y[0, :, 0].tolist() == expected
    lengths = torch.tensor([2])
    assert Collapse(mode).output_lengths(lengths) is lengths


@pytest.mark.parametrize("layer,input_shape", [
    (lambda: MDLSTM2d(3, 4, directions=1), (2, 3, 5, 7)),
    (lambda: MDLSTM2d(3, 4, directions=2, combine="sum"), (2, 3, 6, 2)),
    (lambda: MDLSTM2d(3, 4, dropout=0.5), (2, 3, 4, 4)),
    (lambda: SeparableLSTM2d(3, 4), (2, 3, 5, 7)),
    (lambda: SeparableLSTM2d(3, 4, combine="sum"), (2, 3, 5, 7)),
    (lambda: Tile(2, 3), (2, 3, 5, 7)),
    (lambda: Tile(1, 4), (2, 3, 4, 8)),
    (lambda: Collapse("mean"), (2, 3, 5, 7)),
])
def test_output_shape_matches_forward(layer, input_shape):
    torch.manual_seed(6)
    m = layer()
    y = m(torch.randn(*input_shape))
    assert m.output_shape(input_shape) == tuple(y.shape)
    declared = m.output_shape((None, *input_shape[1:-1], None))
    assert declared[0] is None
    assert all(a is None or a == b for a, b in zip(declared, y.shape))


def test_bad_input_is_named():
    m = MDLSTM2d(3, 4)
    with pytest.raises(ValueError, match="expects 3 input channels, got 2"):
        m.output_shape((None, 2, 4, 4))
    with pytest.raises(ValueError, match=r"expects images \(B, 3, H, W\), got shape \(2, 2, 4, 4\)"):
        m(torch.randn(2, 2, 4, 4))
    with pytest.raises(ValueError, match="directions must be 1, 2 or 4, got 3"):
        MDLSTM2d(3, 4, directions=3)
    with pytest.raises(ValueError, match="Collapse mode"):
        Collapse("median")


def test_dropout_only_in_training():
    torch.manual_seed(7)
    m = MDLSTM2d(2, 3, dropout=0.5)
    x = torch.randn(1, 2, 3, 3)
    m.eval()
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert (m(x) == 0).any()


def test_spec_ops_build_the_pham_stack():
    from convrnn.spec.builder import build_model
    from convrnn.spec.grammar import format_spec, parse

    spec = "tile:2x2 mdlstm:4,dropout=0.25 conv:8,2x4,tanh mdlstm:6,dirs=2,sum seplstm:3 collapse:max ctc"
    assert parse(format_spec(parse(spec))) == parse(spec)
    torch.manual_seed(8)
    model = build_model(spec, input_shape=(1, 16, None), num_outputs=5).eval()
    kinds = [type(m).__name__ for m in model.modules()]
    assert {"Tile", "MDLSTM2d", "SeparableLSTM2d", "Collapse"} <= set(kinds)
    out = model.run(torch.randn(2, 1, 16, 40), lengths=torch.tensor([40, 29]))
    assert out.y.shape == (2, 20, 5)
    assert out.lengths.tolist() == [20, 15]
