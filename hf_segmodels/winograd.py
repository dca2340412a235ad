"""3x3 convolutions by Winograd's minimal filtering F(4x4, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional
Neural Networks", 2016), for CPU inference.

A stride-1, padding-1 3x3 convolution computes every 4x4 output tile from a 6x6 input tile with 36 multiplications per
(input, output) channel pair instead of 144: the input tiles and the filters are transformed (B^T d B, G g G^T), the
36 transformed positions are 36 independent (K x C) @ (C x tiles) matrix products, and the results are transformed
back (A^T m A). The transforms are a few additions over the whole map (done here on strided views, not per tile), so
for the wide maps of segmentation heads (e.g. 256 -> 256 channels at 128x128) the matrix products dominate and the
convolution runs faster than oneDNN's direct convolution on CPU (measured by `benchmarks/bench_maskformer.py`).
The result equals the direct convolution up to float rounding: errors ~1e-5 of the output's scale (larger than direct
summation's ~1e-7, because the transforms mix values of different magnitude); inputs of any size are zero-padded to
whole tiles. Switched off with the other fast kernels in `hf_segmodels.kernels` (`kernels.enabled["winograd"] =
False`); it steps aside while a graph is exported or traced.
"""

import torch

from .kernels import active as kernel_active

# The filter transform G (6 x 3) of F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity.
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)

# Below these sizes the transforms cost more than they save (measured on CPU, one thread, plain eager inference: 64
# channels lose at every size; 128-256 channels break even or win from 64 tiles on (1.35-1.45x at 256 channels),
# 512 channels from 128 tiles (1.27x; 1.00x at 64 tiles), 1024 channels 1.18x at 64 tiles; with the fastest path's
# allocator settings the wide ones win by more): at least MIN_CHANNELS input and output channels, MIN_TILES 4x4
# output tiles, and a tile per CHANNELS_PER_TILE input channels.
MIN_CHANNELS = 96
MIN_TILES = 64
CHANNELS_PER_TILE = 4
# Output tiles per band (see `conv3x3`): bounds the extra memory to one band's transformed inputs and products (~80
# floats per tile and channel: about 20 MB at 256 channels, freed after the band); measured faster than bands of 64 or
# 128 tiles on 128-256 channel maps (fewer, larger matrix products).
BAND_TILES = 256


def _input_transform(d: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """B^T applied along one axis: six phases d0..d5 -> six transformed phases, written into `out`."""
    d1_plus_d2, d1_minus_d2 = d[1] + d[2], d[1] - d[2]
    d4_minus_d2, d3_minus_d1 = d[4] - d[2], d[3] - d[1]
    torch.add(d[4], d[0], alpha=4, out=out[0]).sub_(d[2], alpha=5)
    torch.sub(d[3] + d[4], d1_plus_d2, alpha=4, out=out[1])
    torch.add(d[4] - d[3], d1_minus_d2, alpha=4, out=out[2])
    torch.add(d4_minus_d2, d3_minus_d1, alpha=2, out=out[3])
    torch.sub(d4_minus_d2, d3_minus_d1, alpha=2, out=out[4])
    torch.add(d[5], d[1], alpha=4, out=out[5]).sub_(d[3], alpha=5)


def _output_transform(m: list[torch.Tensor], out: list[torch.Tensor]) -> None:
    """A^T applied along one axis: six transformed phases -> the four output phases, written into `out`."""
    m1_plus_m2, m1_minus_m2 = m[1] + m[2], m[1] - m[2]
    m3_plus_m4, m3_minus_m4 = m[3] + m[4], m[3] - m[4]
    torch.add(m[0] + m1_plus_m2, m3_plus_m4, out=out[0])
    torch.add(m1_minus_m2, m3_minus_m4, alpha=2, out=out[1])
    torch.add(m1_plus_m2, m3_plus_m4, alpha=4, out=out[2])
    torch.add(m1_minus_m2 + m[5], m3_minus_m4, alpha=8, out=out[3])


def transform_filters(weight: torch.Tensor) -> torch.Tensor:
    """(K, C, 3, 3) filters -> (36, K, C): U = G g G^T of every filter, as one product with kron(G, G)."""
    g = torch.tensor(_G, dtype=weight.dtype, device=weight.device)
    out_channels, in_channels = weight.shape[:2]
    transformed = torch.kron(g, g) @ weight.reshape(out_channels * in_channels, 9).T  # (36, K * C)
    return transformed.reshape(36, out_channels, in_channels)


def _band(padded: torch.Tensor, filters: torch.Tensor, output: torch.Tensor) -> None:
    """One band of tile rows: `padded` (B, C, 4n + 2, 4m + 4) zero-padded input rows, `filters` (36, 1, K, C),
    `output` (B, K, n, 4, m, 4) view of the output rows to fill."""
    batch, channels = padded.shape[:2]
    _, out_channels, tiles_h, _, tiles_w, _ = output.shape
    # columns grouped by their position in a tile, so that each column phase is contiguous: (4, B, C, 4n + 2, m + 1)
    columns = padded.reshape(batch, channels, 4 * tiles_h + 2, tiles_w + 1, 4).permute(4, 0, 1, 2, 3).contiguous()
    column_phases = [columns[v, ..., :tiles_w] for v in range(4)] + [columns[v, ..., 1:] for v in range(2)]
    across_columns = padded.new_empty(6, batch, channels, 4 * tiles_h + 2, tiles_w)
    _input_transform(column_phases, list(across_columns.unbind(0)))
    # then rows: phase u holds rows u, u + 4, ... (one per tile row) of every column-transformed phase
    inputs = padded.new_empty(6, 6, batch, channels, tiles_h, tiles_w)  # (row position, column position, ...)
    for q in range(6):
        rows = across_columns[q]
        _input_transform([rows[:, :, u : u + 4 * tiles_h : 4] for u in range(6)], list(inputs[:, q].unbind(0)))
    columns = column_phases = across_columns = rows = None  # free before the products (no `del`: torch.compile)
    # (36, 1, K, C) x (36, B, C, tiles) -> (36, B, K, tiles): 36 independent matrix products
    products = torch.matmul(filters, inputs.reshape(36, batch, channels, tiles_h * tiles_w))
    products = products.reshape(6, 6, batch, out_channels, tiles_h, tiles_w)
    inputs = None
    across_rows = padded.new_empty(4, 6, batch, out_channels, tiles_h, tiles_w)
    for q in range(6):
        _output_transform(list(products[:, q].unbind(0)), list(across_rows[:, q].unbind(0)))
    products = None
    tiles = padded.new_empty(4, 4, batch, out_channels, tiles_h, tiles_w)  # (output row, output column, ...)
    for r in range(4):
        _output_transform(list(across_rows[r].unbind(0)), list(tiles[r].unbind(0)))
    output.copy_(tiles.permute(2, 3, 4, 0, 5, 1))


def conv3x3(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, band_tiles: int | None = None
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride=1, padding=1)` for (B, C, H, W) `x` and (K, C, 3, 3) `weight` by F(4x4, 3x3)
    Winograd; returns (B, K, H, W). Bands of about `band_tiles` 4x4 output tiles are processed one after the other,
    which bounds the extra memory (the transformed inputs and products of one band) and keeps it cache-friendly."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    tiles_h, tiles_w = -(-height // 4), -(-width // 4)
    # zero padding: 1 before (the convolution's), and after up to whole 6x6 tiles with stride 4 (+2 spare columns)
    padded = x.new_empty(batch, channels, 4 * tiles_h + 2, 4 * tiles_w + 4)
    padded[:, :, 1 : height + 1, 1 : width + 1] = x  # (only the margins are zeroed: no pass over the whole map)
    padded[:, :, :1].zero_()
    padded[:, :, height + 1 :].zero_()
    padded[:, :, 1 : height + 1, :1].zero_()
    padded[:, :, 1 : height + 1, width + 1 :].zero_()
    filters = transform_filters(weight).unsqueeze(1)
    output = x.new_empty(batch, out_channels, 4 * tiles_h, 4 * tiles_w)
    rows_per_band = max(1, (band_tiles or BAND_TILES) // (batch * tiles_w))
    for start in range(0, tiles_h, rows_per_band):
        stop = min(tiles_h, start + rows_per_band)
        band_output = output[:, :, 4 * start : 4 * stop].view(batch, out_channels, stop - start, 4, tiles_w, 4)
        _band(padded[:, :, 4 * start : 4 * stop + 2], filters, band_output)
    if (height, width) != tuple(output.shape[-2:]):
        output = output[:, :, :height, :width].contiguous()
    return output.add_(bias.view(1, -1, 1, 1)) if bias is not None else output


def worthwhile(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a stride-1, padding-1 convolution of `x` (B, C, H, W) with `weight` (K, C, 3, 3) should run through
    `conv3x3`: enabled, inference (no autograd) on CPU in float32, and a map and channel counts large enough for the
    transforms to pay off (`MIN_CHANNELS`, `MIN_TILES`, `CHANNELS_PER_TILE`)."""
    tiles = -(-x.shape[-2] // 4) * -(-x.shape[-1] // 4) if x.dim() == 4 else 0
    return (
        kernel_active("winograd")
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and weight.dim() == 4
        and tuple(weight.shape[-2:]) == (3, 3)
        and weight.shape[1] == x.shape[1]
        and min(weight.shape[0], weight.shape[1]) >= MIN_CHANNELS
        and tiles >= max(MIN_TILES, weight.shape[1] / CHANNELS_PER_TILE)
    )


class Conv2d(torch.nn.Conv2d):
    """`nn.Conv2d` (same parameters and state-dict keys) that runs through `conv3x3` when it is a dense 3x3 / stride 1
    / padding 1 convolution and `worthwhile` for the input, through PyTorch's convolution otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
            and worthwhile(x, self.weight)
        ):
            return conv3x3(x, self.weight, self.bias)
        return super().forward(x)
