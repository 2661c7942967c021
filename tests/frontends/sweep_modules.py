"""Small torch modules covering layers and functional ops real models use (see the sweep test).

``MODULES`` maps a case name to ``(make_module, make_inputs)``; inputs are small and seeded.
The test exports each one with both torch.onnx exporters and compares Ember with torch.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

Inputs = tuple[torch.Tensor, ...]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class Lambda(nn.Module):
    """Wraps a function of the inputs as a module (the export traces the function)."""

    def __init__(self, fn: Callable[..., object]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *args):
        return self.fn(*args)


class MHA(nn.Module):
    def __init__(self, masked: bool) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(16, 4, batch_first=True)
        self.masked = masked

    def forward(self, x):
        if self.masked:
            s = x.shape[1]
            mask = torch.triu(torch.ones(s, s, dtype=torch.bool), diagonal=1)
            return self.att(x, x, x, attn_mask=mask, need_weights=False)[0]
        return self.att(x, x, x)[0]


class ConvBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(4, 6, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.up = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.ps = nn.PixelShuffle(2)

    def forward(self, x):
        a = self.c1(x.flatten(2)[..., :10])
        b = self.up(self.dw(x))
        c = self.ps(torch.cat([x, x], 1)[:, :8])
        return a, b, c


class Recurrent(nn.Module):
    def __init__(self, kind: str, **kw) -> None:
        super().__init__()
        self.rnn = getattr(nn, kind)(16, 8, batch_first=True, **kw)

    def forward(self, x):
        out = self.rnn(x)
        return out[0], out[1]


def _x4() -> Inputs:
    return (_randn(2, 4, 6, 6),)


def _seq() -> Inputs:
    return (_randn(2, 5, 16),)


def _vec() -> Inputs:
    return (_randn(2, 3, 8),)


class Encoder(nn.Module):
    """nn.TransformerEncoderLayer; ``is_causal=False`` is passed explicitly because the TorchScript
    exporter (torch 2.13) otherwise traces it as a tensor and fails inside SDPA."""

    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        self.layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, dropout=0.0, batch_first=True,
                                                norm_first=norm_first)

    def forward(self, x):
        return self.layer(x, src_mask=None, is_causal=False)


class MatMuls(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("w", _randn(8, 5, seed=1))
        self.register_buffer("w4", _randn(4, 8, 2, seed=2))

    def forward(self, x):
        return torch.bmm(x, x.transpose(1, 2)), x @ self.w, x[:, None] @ self.w4


class Indexing(nn.Module):
    """gather / scatter / index assignment (GatherElements, ScatterElements, ScatterND)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("idx", torch.tensor([[[0, 7, 3], [1, 1, 2], [5, 4, 0]]] * 2))

    def forward(self, x):
        g = torch.gather(x, -1, self.idx)
        s = torch.zeros_like(x).scatter(-1, self.idx, g)
        y = x.clone()
        y[:, 1] = 0.5
        return g, s, y


def _ids() -> Inputs:
    return (torch.tensor([[1, 4, 7, 0], [9, 2, 2, 5]]),)


def _grid() -> Inputs:
    grid = torch.rand(1, 4, 3, 2, generator=torch.Generator().manual_seed(3)) * 2.2 - 1.1
    return _randn(1, 3, 5, 6), grid


def _x5() -> Inputs:
    return (_randn(1, 2, 4, 4, 4),)


MODULES: dict[str, tuple[Callable[[], nn.Module], Callable[[], Inputs]]] = {
    "mha": (lambda: MHA(False), _seq),
    "mha_causal": (lambda: MHA(True), _seq),
    "encoder_post_norm": (lambda: Encoder(False), _seq),
    "encoder_pre_norm": (lambda: Encoder(True), _seq),
    "upsample_nearest": (lambda: nn.Upsample(scale_factor=2, mode="nearest"), _x4),
    "upsample_bilinear": (lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), _x4),
    "upsample_bilinear_ac": (lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), _x4),
    "interpolate_size": (lambda: Lambda(lambda x: F.interpolate(x, size=(9, 5), mode="nearest")), _x4),
    "interpolate_scale": (lambda: Lambda(lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear")), _x4),
    "group_norm": (lambda: nn.GroupNorm(2, 4), _x4),
    "instance_norm": (lambda: nn.InstanceNorm2d(4, affine=True), _x4),
    "instance_norm_plain": (lambda: nn.InstanceNorm2d(4), _x4),
    "activations": (lambda: Lambda(lambda x: (F.silu(x), F.mish(x), F.elu(x), F.softplus(x),
                                              F.gelu(x, approximate="tanh"), F.selu(x), F.celu(x, 0.5),
                                              F.softsign(x), F.hardtanh(x, -0.5, 0.5))), _x4),
    "embedding": (lambda: nn.Embedding(10, 6), _ids),
    "cumsum": (lambda: Lambda(lambda x: torch.cumsum(x, dim=1)), _vec),
    "argmax": (lambda: Lambda(lambda x: (torch.argmax(x, dim=-1), torch.argmin(x, dim=1, keepdim=True))), _vec),
    "topk": (lambda: Lambda(lambda x: torch.topk(x, 3, dim=-1)), _vec),
    "reductions": (lambda: Lambda(lambda x: (x.mean((1, 2)), x.sum(-1), x.amax(1), x.min(dim=2).values,
                                             x.amin((0, 2)), x.prod(1), x.norm(dim=-1),
                                             x.std(1), x.var(-1, keepdim=True))), _vec),
    "rounding": (lambda: Lambda(lambda x: (torch.floor(x * 3), torch.ceil(x * 3), torch.round(x * 3),
                                           torch.sign(x))), _vec),
    "trig": (lambda: Lambda(lambda x: (torch.sin(x), torch.cos(x), torch.atan(x), torch.tan(x * 0.3))), _vec),
    "mod": (lambda: Lambda(lambda x: (torch.remainder(x, 0.7), torch.fmod(x, 0.7),
                                      torch.arange(x.shape[-1]) % 3)), _vec),
    "where_mask": (lambda: Lambda(lambda x: (torch.where(x > 0, x, 0.1 * x),
                                             x.masked_fill(x < -0.5, float("-inf")).softmax(-1))), _vec),
    "logic": (lambda: Lambda(lambda x: ((x > 0) & (x < 1), (x > 1) | (x < -1), (x > 0) ^ (x > 0.5),
                                        x >= 0.2, x <= 0.2, x != 0.2, torch.isnan(x))), _vec),
    "split_stack": (lambda: Lambda(lambda x: (torch.stack(x.chunk(2, -1), 0),
                                              torch.cat(x.split([3, 5], -1)[::-1], -1))), _vec),
    "reshape": (lambda: Lambda(lambda x: (x.flatten(1), x.permute(2, 0, 1), x.view(2, 4, 6),
                                          x.transpose(1, 2).contiguous())), _vec),
    "adaptive_pool": (lambda: Lambda(lambda x: (F.adaptive_avg_pool2d(x, (1, 1)), F.adaptive_avg_pool2d(x, (3, 3)),
                                                F.adaptive_max_pool2d(x, 1))), _x4),
    "convs": (ConvBlock, _x4),
    "pad": (lambda: Lambda(lambda x: (F.pad(x, (1, 2, 2, 1), mode="reflect"), F.pad(x, (1, 1, 1, 1), mode="replicate"),
                                      F.pad(x, (1, 0, 0, 2), value=0.5))), _x4),
    "einsum": (lambda: Lambda(lambda x: (torch.einsum("bij,bkj->bik", x, x), torch.einsum("bij->bj", x))), _vec),
    "matmul": (MatMuls, _vec),
    "indexing": (Indexing, _vec),
    "logsumexp_normalize": (lambda: Lambda(lambda x: (torch.logsumexp(x, -1), F.normalize(x, dim=-1),
                                                      F.log_softmax(x, 1))), _vec),
    "layer_norm_plain": (lambda: nn.LayerNorm(8, elementwise_affine=False), _vec),
    "tile_repeat": (lambda: Lambda(lambda x: (x.repeat(1, 2, 1), x.expand(3, 2, 3, 8), torch.tril(x),
                                              torch.triu(x, 1))), _vec),
    "depth_space": (lambda: Lambda(lambda x: (F.pixel_unshuffle(x, 2), F.pixel_shuffle(x, 2))), _x4),
    "one_hot": (lambda: Lambda(lambda i: F.one_hot(i, 10).float()), _ids),
    "grid_sample": (lambda: Lambda(lambda x, g: (F.grid_sample(x, g, align_corners=False),
                                                 F.grid_sample(x, g, mode="nearest", padding_mode="border",
                                                               align_corners=True),
                                                 F.grid_sample(x, g, mode="bicubic", padding_mode="reflection",
                                                               align_corners=False))), _grid),
    "volumetric": (lambda: nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU(),
                                         nn.MaxPool3d(2), nn.Upsample(scale_factor=2, mode="trilinear")), _x5),
    "sort_any": (lambda: Lambda(lambda x: (torch.any(x > 1, -1), torch.all(x > -1, 1), (x > 0).sum(-1),
                                           torch.max(x, 1)[1], torch.sort(x, -1)[0], torch.argsort(x, -1),
                                           torch.diagonal(x, 0, 1, 2))), _vec),
    "misc_math": (lambda: Lambda(lambda x: (torch.log1p(x.abs()), torch.rsqrt(x.abs() + 1), torch.log2(x.abs() + 1),
                                            x.square(), torch.flip(x, [-1]), torch.roll(x, 2, -1), x[:, ::2],
                                            torch.var_mean(x, -1)[0], torch.full_like(x, 3.0),
                                            F.glu(x, -1), F.relu6(x), F.softmin(x, -1), F.tanhshrink(x),
                                            F.logsigmoid(x), F.hardshrink(x, 0.5))), _vec),
    "lstm": (lambda: Recurrent("LSTM", num_layers=2, bidirectional=True), _seq),
    "gru": (lambda: Recurrent("GRU"), _seq),
    "rnn_relu": (lambda: Recurrent("RNN", nonlinearity="relu", bidirectional=True), _seq),
    "minmax": (lambda: Lambda(lambda x: (torch.maximum(x, x.flip(-1)), torch.minimum(x, 0.3 * x),
                                         torch.clamp(x, min=-0.2), torch.abs(x).sqrt())), _vec),
}
