"""LSTM/GRU stacks over feature sequences, with packed variable lengths and carried state."""
# B batch, T time steps, F features, H hidden size, L layers, D directions (1 or 2)
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from convrnn.layers.base import Shape, Shaped, expect_rank

State = Union[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]

# Memory estimate only (docs/spec.md). Per step, layer and direction, how many H-sized tensors autograd
# keeps for backward (gates and states), and how many H-sized buffers the backward of the stack
# allocates at once (gradients of the gates and states of a whole layer). Calibrated on CPU against
# one-layer and two-layer presets (tests/test_memory.py checks every preset within 30%); cuDNN keeps
# less, so on CUDA the estimate for LSTMs errs high.
_KEPT_PER_STEP = {"lstm": 6, "gru": 5}
_BACKWARD_PER_STEP = {"lstm": 9, "gru": 7}


class Recurrent(nn.Module, Shaped):
    """A stack of LSTM or GRU layers (``nn.LSTM``/``nn.GRU``, batch first) returning every step.

    With ``lengths``, the batch is packed (``enforce_sorted=False``) so each sequence stops at
    its own length: the output is zero past each length and the returned state is the state
    after each sequence's last valid step. The output is padded back to the input's ``T``.

    ``state`` is what ``nn.LSTM``/``nn.GRU`` take and return: ``(h, c)`` for LSTM and ``h`` for GRU,
    each ``(L*D, B, H)``. Passing the returned state to the next call continues the sequences
    (truncated backpropagation through time: the caller detaches it between batches).
    Picking the last valid step is the head's job, not this layer's.

    ``dropout`` follows PyTorch: it applies between stacked layers, so it needs ``num_layers > 1``.
    ``weight_dropout`` drops entries of the hidden-to-hidden matrices in training (DropConnect, the
    weight drop of Merity et al. 2017, "Regularizing and Optimizing LSTM Language Models"): one mask
    per batch, the same at every step, so it regularises the recurrence itself without disturbing the
    memory from step to step, and the fused LSTM/GRU kernels still run.

    Shape:
        - Input: ``(B, T, F)`` with ``F = input_size``; lengths ``(B,)`` in ``[1, T]``.
        - Output: ``(B, T, H*D)`` and the new state; lengths pass through unchanged.
    """

    uses_lengths = True
    stateful = True

    def __init__(self, input_size: int, hidden_size: int, *, mode: str = "lstm", num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0, weight_dropout: float = 0.0):
        super().__init__()
        if mode not in _KEPT_PER_STEP:
            raise ValueError(f"recurrent mode must be 'lstm' or 'gru', got {mode!r}")
        self.mode, self.hidden_size, self.num_layers = mode, hidden_size, num_layers
        self.bidirectional, self.weight_dropout = bidirectional, weight_dropout
        rnn_cls = nn.LSTM if mode == "lstm" else nn.GRU
        self.rnn = rnn_cls(input_size, hidden_size, num_layers=num_layers, bidirectional=bidirectional,
                           dropout=dropout, batch_first=True)

    @property
    def input_size(self) -> int:
        return self.rnn.input_size

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def activation_factor(self) -> float:
        """Output-sized tensors kept for backward: the output plus gates and states of every layer."""
        return 1.0 + _KEPT_PER_STEP[self.mode] * self.num_layers

    @property
    def backward_workspace(self) -> float:
        """Output-sized buffers alive while one layer of the stack runs its backward."""
        return float(_BACKWARD_PER_STEP[self.mode])

    def _rnn(self, x, state):
        if not (self.training and self.weight_dropout):
            return self.rnn(x, state)
        return functional_call(self.rnn, self._weights(), (x, state))

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                state: Optional[State] = None, *, need_state: bool = True) -> tuple[torch.Tensor, Optional[State]]:
        """``need_state=False`` says the caller will not use the returned state (it is then None when
        the lengths differ): on the CPU that lets a batch of unequal lengths skip packing (below)."""
        total = x.shape[1]
        if lengths is None or bool((lengths == total).all()):
            return self._rnn(x, state)  # (B, T, F) -> (B, T, H*D)
        if bool((lengths < 1).any()) or bool((lengths > total).any()):
            raise ValueError(f"lengths must lie in [1, {total}] for a sequence of {total} steps, got {lengths.tolist()}")
        if not need_state and x.device.type == "cpu":
            return self._padded(x, lengths, state), None
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        y, new_state = self._rnn(packed, state)
        y, _ = pad_packed_sequence(y, batch_first=True, total_length=total)  # -> (B, T, H*D), zeros past lengths
        return y, new_state

    def _padded(self, x: torch.Tensor, lengths: torch.Tensor, state: Optional[State]) -> torch.Tensor:
        """The packed result without packing: one fused call per layer and direction on the padded batch.

        On the CPU, PyTorch runs a packed sequence through a loop of small per-step operations, while
        an unpacked batch goes through the fused (oneDNN) kernel, 1.3 to 1.5 times faster for the
        crnn preset's stack. Padding at the end cannot reach a valid step of the forward direction;
        the reverse direction runs forward over each sequence reversed within its own length, so it
        too starts at each sequence's last valid step. Outputs past the lengths are zeroed as
        ``pad_packed_sequence`` does. The final states would be those after the padding, so this path
        does not return them.
        """
        b, total = x.shape[:2]
        steps = torch.arange(total, device=x.device).expand(b, total)  # (B, T)
        last = (lengths.to(x.device) - 1).unsqueeze(1)  # (B, 1)
        valid = steps <= last  # (B, T)
        reverse_index = torch.where(valid, last - steps, steps)  # t -> len-1-t inside the length, t past it
        weights = self._weights()
        fused = torch._VF.lstm if self.mode == "lstm" else torch._VF.gru
        d_count, h_size = self.num_directions, self.hidden_size
        if state is None:  # (L*D, B, H) each: h, and c for an LSTM
            zeros = x.new_zeros(self.num_layers * d_count, b, h_size)
            state = (zeros, zeros) if self.mode == "lstm" else zeros
        y = x
        for layer in range(self.num_layers):
            outs = []
            for d in range(d_count):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                flat = [weights[f"{kind}{suffix}"] for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
                        if f"{kind}{suffix}" in weights]
                k = layer * d_count + d
                hx = tuple(s[k:k + 1] for s in state) if self.mode == "lstm" else state[k:k + 1]
                inp = y if d == 0 else _gather_steps(y, reverse_index)
                out = fused(inp, hx, flat, self.rnn.bias, 1, 0.0, self.training, False, True)[0]  # (B, T, H)
                outs.append(out if d == 0 else _gather_steps(out, reverse_index))
            y = torch.cat(outs, dim=2) if d_count == 2 else outs[0]  # (B, T, H*D)
            if layer < self.num_layers - 1 and self.rnn.dropout > 0:
                y = nn.functional.dropout(y, self.rnn.dropout, self.training)
        return y * valid.unsqueeze(2).to(y.dtype)

    def _weights(self) -> dict[str, torch.Tensor]:
        """The stack's parameters by name, with weight dropout applied in training (as ``_rnn`` does)."""
        drop = self.training and self.weight_dropout
        return {name: nn.functional.dropout(w, self.weight_dropout) if drop and name.startswith("weight_hh") else w
                for name, w in self.rnn.named_parameters()}

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank(self.mode, input_shape, [3], "a feature sequence (B, T, F)")
        b, t, f = input_shape
        if f is not None and f != self.input_size:
            raise ValueError(f"{self.mode} expects {self.input_size} input features, got {f}")
        return (b, t, self.hidden_size * self.num_directions)


def _gather_steps(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x[b, index[b, t]]`` for every b, t: ``(B, T, F)`` by ``(B, T)`` -> ``(B, T, F)``."""
    return torch.gather(x, 1, index.unsqueeze(2).expand(-1, -1, x.shape[2]))
