"""Feed-forward layers with shape inference: Conv, Pool, BatchNorm, Dropout, Flatten, Dense, Embedding, OneHot."""
# B batch, T time steps, C channels, H height, W width, F features, V vocabulary
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from convrnn.layers.base import Shape, Shaped, conv_out, expect_rank

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "gelu": nn.GELU,
    "elu": nn.ELU,
    "leaky": nn.LeakyReLU,
    "linear": nn.Identity,
    "none": nn.Identity,
}

IntPair = Union[int, Sequence[int]]


def make_activation(name: Optional[str]) -> nn.Module:
    """The activation module for a name in ``ACTIVATIONS`` (None means linear)."""
    key = "linear" if name is None else name
    if key not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[key]()


def _pair(value: IntPair) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"expected an int or a pair of ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _same_pads(kernel: int) -> tuple[int, int]:
    """Padding before/after an axis so that stride 1 keeps its size; even kernels pad one more after."""
    total = kernel - 1
    return (total // 2, total - total // 2)


def _window_out(size: Optional[int], kernel: int, stride: int, pads: tuple[int, int]) -> Optional[int]:
    return None if size is None else conv_out(size + pads[0] + pads[1], kernel, stride, 0)


class Conv(nn.Module, Shaped):
    """2-D convolution followed by an activation.

    ``padding='same'`` keeps ``H`` and ``W`` at stride 1 for odd and even kernels (an even kernel
    pads one pixel more at the bottom/right) and gives ``ceil(size / stride)`` at larger strides;
    ``'valid'`` pads nothing; an int pads that much on every side.

    Shape:
        - Input: ``(B, C, H, W)`` with ``C = in_channels``.
        - Output: ``(B, out_channels, H', W')`` with the usual convolution arithmetic.
        - Lengths along ``W`` follow the same arithmetic (at least 1).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntPair, *, stride: IntPair = 1,
                 padding: Union[str, int] = "same", activation: Optional[str] = "relu"):
        super().__init__()
        kh, kw = self.kernel_size = _pair(kernel_size)
        self.stride = _pair(stride)
        if padding == "same":
            self.pads = (_same_pads(kh), _same_pads(kw))
        elif padding == "valid":
            self.pads = ((0, 0), (0, 0))
        elif isinstance(padding, int) and padding >= 0:
            self.pads = ((padding, padding), (padding, padding))
        else:
            raise ValueError(f"padding must be 'same', 'valid' or an int >= 0, got {padding!r}")
        self.in_channels, self.out_channels, self.padding = in_channels, out_channels, padding
        (top, bottom), (left, right) = self.pads
        symmetric = top == bottom and left == right
        # Symmetric padding goes to Conv2d; asymmetric padding (even kernels) is an explicit F.pad.
        self.pre_pad = None if symmetric else (left, right, top, bottom)
        self.conv = nn.Conv2d(in_channels, out_channels, self.kernel_size, stride=self.stride,
                              padding=(top, left) if symmetric else 0)
        self.activation = make_activation(activation)
        self.activation_name = activation or "linear"

    @property
    def activation_factor(self) -> float:
        return 1.0 if isinstance(self.activation, nn.Identity) else 2.0

    @property
    def backward_workspace(self) -> float:
        """Gradients of the output (and of the pre-activation), in the layout CPU kernels (oneDNN) use:
        channels padded to a block of 8, so a 4-channel conv's buffers are twice its output."""
        return self.activation_factor * max(1.0, 8 / self.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_pad is not None:
            x = F.pad(x, self.pre_pad)
        return self.activation(self.conv(x))

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("conv", input_shape, [4], "an image (B, C, H, W)")
        b, c, h, w = input_shape
        if c is not None and c != self.in_channels:
            raise ValueError(f"conv expects {self.in_channels} input channels, got {c}")
        oh = _window_out(h, self.kernel_size[0], self.stride[0], self.pads[0])
        ow = _window_out(w, self.kernel_size[1], self.stride[1], self.pads[1])
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            kh, kw = self.kernel_size
            raise ValueError(f"conv {kh}x{kw} with padding {self.padding!r} needs a larger input than {h}x{w}")
        return (b, self.out_channels, oh, ow)

    def output_lengths(self, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if lengths is None:
            return None
        left, right = self.pads[1]
        return (torch.div(lengths + left + right - self.kernel_size[1], self.stride[1], rounding_mode="floor") + 1).clamp(min=1)


class Pool(nn.Module, Shaped):
    """Max or average pooling without padding (a partial window at the edge is dropped).

    Shape:
        - Input: ``(B, C, H, W)``.
        - Output: ``(B, C, (H - KH) // SH + 1, (W - KW) // SW + 1)``; stride defaults to the kernel.
        - Lengths along ``W`` follow the same arithmetic (at least 1).
    """

    def __init__(self, kernel_size: IntPair, *, stride: Optional[IntPair] = None, mode: str = "max"):
        super().__init__()
        self.kernel_size = _pair(kernel_size)
        self.stride = self.kernel_size if stride is None else _pair(stride)
        if mode not in ("max", "avg"):
            raise ValueError(f"pool mode must be 'max' or 'avg', got {mode!r}")
        self.mode = mode
        pool_cls = nn.MaxPool2d if mode == "max" else nn.AvgPool2d
        self.pool = pool_cls(self.kernel_size, stride=self.stride)

    @property
    def activation_factor(self) -> float:
        """Max pooling keeps its argmax indices (int64: two float32 outputs' worth) for backward."""
        return 3.0 if self.mode == "max" else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("pool", input_shape, [4], "an image (B, C, H, W)")
        b, c, h, w = input_shape
        oh = _window_out(h, self.kernel_size[0], self.stride[0], (0, 0))
        ow = _window_out(w, self.kernel_size[1], self.stride[1], (0, 0))
        if (oh is not None and oh < 1) or (ow is not None and ow < 1):
            kh, kw = self.kernel_size
            raise ValueError(f"pool {kh}x{kw} needs an input of at least {kh}x{kw}, got {h}x{w}")
        return (b, c, oh, ow)

    def output_lengths(self, lengths: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if lengths is None:
            return None
        return (torch.div(lengths - self.kernel_size[1], self.stride[1], rounding_mode="floor") + 1).clamp(min=1)


class BatchNorm(nn.Module, Shaped):
    """Batch normalization over channels (images) or features (sequences, vectors).

    Statistics are taken over every position, padded ones included (lengths are not used).

    Shape:
        - Input: ``(B, C, H, W)``, ``(B, T, F)`` or ``(B, F)`` with ``C``/``F`` = ``channels``.
        - Output: same as input.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
                return self.norm(x.flatten(2)).view_as(x)  # (B, C, H, W) -> (B, C, H*W) -> (B, C, H, W)
            b, c, h, w = x.shape  # channels last: normalise (B*H*W, C) rows, a view, so the layout survives
            y = self.norm(x.permute(0, 2, 3, 1).reshape(b * h * w, c))  # (B, C, H, W) -> (B*H*W, C)
            return y.view(b, h, w, c).permute(0, 3, 1, 2)  # (B*H*W, C) -> (B, C, H, W), channels last
        if x.dim() == 3:
            return self.norm(x.transpose(1, 2)).transpose(1, 2)  # (B, T, F) -> (B, F, T) -> (B, T, F)
        return self.norm(x)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("bn", input_shape, [2, 3, 4], "an image, a feature sequence or a vector")
        channels = input_shape[1] if len(input_shape) == 4 else input_shape[-1]
        if channels is not None and channels != self.channels:
            raise ValueError(f"bn expects {self.channels} channels, got {channels} in shape {tuple(input_shape)}")
        return tuple(input_shape)


class Dropout(nn.Module, Shaped):
    """Dropout with probability ``p`` (active in training mode only).

    Shape:
        - Input: any. Output: same as input.
    """

    def __init__(self, p: float):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        self.p = p
        self.dropout = nn.Dropout(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(x)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        return tuple(input_shape)


class Flatten(nn.Module, Shaped):
    """Flatten each image (of a sequence) into a feature vector.

    Shape:
        - Input: ``(B, T, C, H, W)`` or ``(B, C, H, W)`` with fixed ``C``, ``H``, ``W``.
        - Output: ``(B, T, C*H*W)`` or ``(B, C*H*W)``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 5:
            return x.flatten(2)  # (B, T, C, H, W) -> (B, T, C*H*W)
        return x.flatten(1)  # (B, C, H, W) -> (B, C*H*W)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("flatten", input_shape, [4, 5], "an image (B, C, H, W) or an image sequence (B, T, C, H, W)")
        lead, image = tuple(input_shape[:-3]), tuple(input_shape[-3:])
        if any(s is None for s in image):
            raise ValueError(f"flatten needs fixed C, H, W to know its feature count, got {image}")
        c, h, w = image
        return (*lead, c * h * w)


class Dense(nn.Module, Shaped):
    """Linear layer and activation, applied per step on sequences.

    Shape:
        - Input: ``(B, T, F)`` or ``(B, F)`` with ``F = in_features``.
        - Output: ``(B, T, out_features)`` or ``(B, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, activation: Optional[str] = None):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.activation = make_activation(activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(self.linear(x))

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("dense", input_shape, [2, 3], "a feature sequence (B, T, F) or a vector (B, F)")
        if input_shape[-1] is not None and input_shape[-1] != self.linear.in_features:
            raise ValueError(f"dense expects {self.linear.in_features} input features, got {input_shape[-1]}")
        return (*input_shape[:-1], self.linear.out_features)


class Embedding(nn.Module, Shaped):
    """Token ids to learned vectors.

    Shape:
        - Input: ``(B, T)`` int64 in ``[0, num_embeddings)``.
        - Output: ``(B, T, embedding_dim)``.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(num_embeddings, embedding_dim)

    @property
    def weight(self) -> nn.Parameter:
        return self.embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(x)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("embed", input_shape, [2], "token ids (B, T)")
        return (*input_shape, self.embedding.embedding_dim)


class OneHot(nn.Module, Shaped):
    """Token ids to one-hot float vectors (no parameters).

    Shape:
        - Input: ``(B, T)`` int64 in ``[0, num_classes)``.
        - Output: ``(B, T, num_classes)`` in the default float dtype.
    """

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.one_hot(x, self.num_classes).to(torch.get_default_dtype())  # (B, T) -> (B, T, V)

    def output_shape(self, input_shape: Sequence[Optional[int]]) -> Shape:
        expect_rank("onehot", input_shape, [2], "token ids (B, T)")
        return (*input_shape, self.num_classes)
