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
False`).

While a graph is exported (ONNX, OpenVINO, torch.export) the same algorithm is written in standard operators instead
(`conv3x3_graph`): the input transform as a grouped 6x6 / stride-4 convolution, the 36 products as one batched MatMul,
the output transform as a grouped 1x1 convolution followed by DepthToSpace (pixel shuffle), and the filter transform
as a MatMul of the weights that the runtimes compute once when they load the graph. ONNX Runtime and OpenVINO run it
faster than their own direct convolution from 128 / 256 channels on (`EXPORT_MIN_CHANNELS`; whole models:
`benchmarks/bench_deploy.py`). Under `torch.compile` alone it steps aside (inductor picks its own convolution).
"""

import weakref

import torch
import torch.nn.functional as F

from .kernels import active as kernel_active, capturing, exporting

# The filter transform G (6 x 3) of F(4x4, 3x3) with interpolation points 0, 1, -1, 2, -2 and infinity.
_G = (
    (1 / 4, 0.0, 0.0),
    (-1 / 6, -1 / 6, -1 / 6),
    (-1 / 6, 1 / 6, -1 / 6),
    (1 / 24, 1 / 12, 1 / 6),
    (1 / 24, -1 / 12, 1 / 6),
    (0.0, 0.0, 1.0),
)

# Where the transforms pay off (measured direct / Winograd on CPU, one thread, with the fastest path's allocator
# settings and the filters transformed once, `cached`): 96 channels 0.92x at 64 tiles, 1.5x at 256; 128 channels 1.21x
# at 64 tiles, 0.62x at 16; 256 channels 1.88x at 64, 1.08x at 16; 512 channels 2.26x at 64, 1.46x at 16; 2048 -> 256
# channels 1.37x at 16; 1024 channels 0.34x at 4 tiles (the products read all 36 transformed filters for a few tiles:
# memory-bound). The transforms cost per tile in proportion to C + K, the products C * K: so at least MIN_CHANNELS
# input and output channels, at least MIN_TILES 4x4 output tiles, and at least TILE_CHANNELS / w tiles, w the harmonic
# mean of the input and output channels (narrower layers need more tiles to amortise the transforms).
MIN_CHANNELS = 96
MIN_TILES = 16
TILE_CHANNELS = 7168
# Filters transformed at every call (`filters_cached=False`: the MaskFormer mask projection, whose filters depend on
# the image) must amortise that transform too (~2 ms for 256 x 256 channels): at least UNCACHED_MIN_TILES tiles and a
# tile per UNCACHED_CHANNELS_PER_TILE input channels (measured 1.35-1.45x at 256 channels from 64 tiles, 512 channels
# 1.27x at 128 tiles and 1.00x at 64).
UNCACHED_MIN_TILES = 64
UNCACHED_CHANNELS_PER_TILE = 4
# Output tiles per band (see `conv3x3`): bounds the extra memory to one band's transformed inputs and products (~80
# floats per tile and channel: about 20 MB at 256 channels, freed after the band); measured faster than bands of 64 or
# 128 tiles on 128-256 channel maps (fewer, larger matrix products).
BAND_TILES = 256
# In exported graphs (`conv3x3_graph`): convolutions with at least this many input and output channels (and maps large
# enough, see `graph_worthwhile`). Measured at 1 thread against the runtimes' direct convolution:
# ONNX Runtime 1.7-2.6x faster at 128-1024 channels (16x16 to 128x128 maps), 1.2x at 64; OpenVINO 1.2-1.6x at 256
# and more, 0.96-1.17x at 128.
EXPORT_MIN_CHANNELS = 128

# B^T (6 x 6) and A^T (4 x 6) of F(4x4, 3x3) (same points as _G); the eager kernel applies them as the additions in
# `_input_transform` / `_output_transform`, the graph form as convolution kernels.
_BT = (
    (4.0, 0.0, -5.0, 0.0, 1.0, 0.0),
    (0.0, -4.0, -4.0, 1.0, 1.0, 0.0),
    (0.0, 4.0, -4.0, -1.0, 1.0, 0.0),
    (0.0, -2.0, -1.0, 2.0, 1.0, 0.0),
    (0.0, 2.0, -1.0, -2.0, 1.0, 0.0),
    (0.0, 4.0, 0.0, -5.0, 0.0, 1.0),
)
_AT = (
    (1.0, 1.0, 1.0, 1.0, 1.0, 0.0),
    (0.0, 1.0, -1.0, 2.0, -2.0, 0.0),
    (0.0, 1.0, 1.0, 4.0, 4.0, 0.0),
    (0.0, 1.0, -1.0, 8.0, -8.0, 1.0),
)


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


def cacheable(*sources: torch.Tensor) -> bool:
    """Whether a value derived from `sources` can be remembered (`cached`): not for inference tensors (no version
    counter, so their changes cannot be seen), nor while autograd would need the derivation, nor while a graph is
    captured."""
    if capturing():
        return False
    return not any(tensor.is_inference() for tensor in sources) and not (
        torch.is_grad_enabled() and any(tensor.requires_grad for tensor in sources)
    )


def _same(remembered: tuple, sources: tuple) -> bool:
    """Whether `sources` are the tensors `remembered` ((detached view, version) pairs) held, unchanged since."""
    return len(remembered) == len(sources) and all(
        old.data_ptr() == new.data_ptr() and version == new._version and old.dtype == new.dtype
        and old.device == new.device and old.shape == new.shape
        for (old, version), new in zip(remembered, sources)
    )  # fmt: skip


# owner module -> (detached views of the sources, the derived value); weak, so that the cache is neither pickled,
# deep-copied nor kept alive with a module that is gone
_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, tuple]" = weakref.WeakKeyDictionary()


def cached(owner: torch.nn.Module, compute, *sources: torch.Tensor):
    """`compute()` (derived from the tensors `sources`, e.g. a layer's transformed filters), remembered for `owner` for
    as long as `sources` are unchanged: same storage (held by the cache, so it cannot be reused by another tensor),
    same version counter, dtype, device and shape. An in-place update (`load_state_dict`, `param.mul_()` under
    `no_grad`), a new parameter or a `.to()` computes it again; a write through `.data` or NumPy bypasses the version
    counter and is not seen (call `clear_cache()` after one). Not cached when not `cacheable`. The filters of constant
    weights are transformed once instead of at every call (~2 ms for 256 x 256 channels, ~20 ms for 2048 x 256 at one
    thread); the extra memory is 4x the layer's 3x3 weights (~200 MB for MaskFormer-R50)."""
    if not cacheable(*sources):
        return compute()
    remembered = _CACHE.get(owner)
    if remembered is not None and _same(remembered[0], sources):
        return remembered[1]
    value = compute()
    # (a detached view shares the storage, which keeps its address from being reused, and the version counter, so
    # the version at this point is kept beside it)
    _CACHE[owner] = (tuple((source.detach(), source._version) for source in sources), value)
    return value


def clear_cache() -> None:
    """Forgets every remembered transformed filter (`cached`)."""
    _CACHE.clear()


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


def conv3x3_for(x: torch.Tensor, weight: torch.Tensor, filters_cached: bool = True):
    """The Winograd form for a stride-1, padding-1 3x3 convolution of `x` with `weight`: `conv3x3` where `worthwhile`
    (eager CPU inference; `filters_cached`: whether its transformed filters are remembered), `conv3x3_graph` where
    `graph_worthwhile` (export), else None (PyTorch's convolution)."""
    if worthwhile(x, weight, filters_cached=filters_cached):
        return conv3x3
    if graph_worthwhile(x, weight):
        return conv3x3_graph
    return None


def conv3x3(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    band_tiles: int | None = None,
    filters: torch.Tensor | None = None,
) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride=1, padding=1)` for (B, C, H, W) `x` and (K, C, 3, 3) `weight` by F(4x4, 3x3)
    Winograd; returns (B, K, H, W). Bands of about `band_tiles` 4x4 output tiles are processed one after the other,
    which bounds the extra memory (the transformed inputs and products of one band) and keeps it cache-friendly."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    tiles_h, tiles_w = _tiles(height), _tiles(width)
    # zero padding: 1 before (the convolution's), and after up to whole 6x6 tiles with stride 4 (+2 spare columns)
    padded = x.new_empty(batch, channels, 4 * tiles_h + 2, 4 * tiles_w + 4)
    padded[:, :, 1 : height + 1, 1 : width + 1] = x  # (only the margins are zeroed: no pass over the whole map)
    padded[:, :, :1].zero_()
    padded[:, :, height + 1 :].zero_()
    padded[:, :, 1 : height + 1, :1].zero_()
    padded[:, :, 1 : height + 1, width + 1 :].zero_()
    filters = (transform_filters(weight) if filters is None else filters).unsqueeze(1)
    output = x.new_empty(batch, out_channels, 4 * tiles_h, 4 * tiles_w)
    rows_per_band = max(1, (band_tiles or BAND_TILES) // (batch * tiles_w))
    for start in range(0, tiles_h, rows_per_band):
        stop = min(tiles_h, start + rows_per_band)
        band_output = output[:, :, 4 * start : 4 * stop].view(batch, out_channels, stop - start, 4, tiles_w, 4)
        _band(padded[:, :, 4 * start : 4 * stop + 2], filters, band_output)
    if (height, width) != tuple(output.shape[-2:]):
        output = output[:, :, :height, :width].contiguous()
    return output.add_(bias.view(1, -1, 1, 1)) if bias is not None else output


def conv3x3_graph(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.conv2d(x, weight, bias, stride=1, padding=1)` by F(4x4, 3x3) Winograd in standard operators, for exported
    graphs (any batch, height and width: no size-dependent branch). (B, C, H, W) x (K, C, 3, 3) -> (B, K, H, W)."""
    batch, channels, height, width = x.shape
    out_channels = weight.shape[0]
    bt = torch.tensor(_BT, dtype=x.dtype, device=x.device)
    at = torch.tensor(_AT, dtype=x.dtype, device=x.device)
    # input transform B^T d B of every 6x6 tile (stride 4), per channel: (B, C * 36, tiles_h, tiles_w). The pad is
    # fixed (1 before, 4 after) and the strided convolution floors, which gives ceil(H / 4) x ceil(W / 4) tiles
    # without a size-dependent pad (which torch.export could not bound)
    input_kernel = torch.kron(bt, bt).reshape(36, 1, 6, 6).repeat(channels, 1, 1, 1)
    inputs = F.conv2d(F.pad(x, (1, 4, 1, 4)), input_kernel, stride=4, groups=channels)
    tiles_h, tiles_w = inputs.shape[-2:]
    # the 36 products (K, C) @ (C, tiles): (36, B, C, T) -> (36, B, K, T)
    inputs = inputs.reshape(batch, channels, 36, -1).permute(2, 0, 1, 3)
    products = torch.matmul(transform_filters(weight).unsqueeze(1), inputs)
    products = products.permute(1, 2, 0, 3).reshape(batch, out_channels * 36, tiles_h, tiles_w)
    # output transform A^T m A per output channel, then the 4x4 tiles into place: (B, K, 4 tiles_h, 4 tiles_w)
    output_kernel = torch.kron(at, at).reshape(16, 36, 1, 1).repeat(out_channels, 1, 1, 1)
    output = F.pixel_shuffle(F.conv2d(products, output_kernel, groups=out_channels), 4)
    if isinstance(height, torch.SymInt) or isinstance(width, torch.SymInt):
        # (a slice to a symbolic size is a guard H <= 4 ceil(H / 4) that torch.export cannot prove; an index is not)
        output = output.index_select(2, torch.arange(height, device=x.device))
        output = output.index_select(3, torch.arange(width, device=x.device))
    else:  # (unconditional: a TorchScript trace with dynamic axes records the slice, not a size comparison)
        output = output[:, :, :height, :width]
    return output + bias.reshape(1, -1, 1, 1) if bias is not None else output


def _tiles(side: int) -> int:
    """4x4 output tiles along a map side: ceil(side / 4)."""
    return -(-side // 4)


def _geometry_fits(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.dtype == weight.dtype == torch.float32
        and x.dim() == 4
        and weight.dim() == 4
        and tuple(weight.shape[-2:]) == (3, 3)
        and weight.shape[1] == x.shape[1]
    )


def _at_least(side, minimum: int) -> bool:
    """Whether a map side (an int, or a symbolic size of a dynamic export) is at least `minimum` for every input the
    graph takes (a symbolic size: provably from its declared range, without adding a guard)."""
    if isinstance(side, torch.SymInt):
        from torch.fx.experimental.symbolic_shapes import statically_known_true

        return statically_known_true(side >= minimum)
    return side >= minimum


def graph_worthwhile(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether a stride-1, padding-1 convolution of `x` (B, C, H, W) with `weight` (K, C, 3, 3) is written as
    `conv3x3_graph` in a graph being exported: enabled, float32, `EXPORT_MIN_CHANNELS` input and output channels or
    more, and at a fixed size `MIN_TILES` 4x4 tiles or more (the measured range); in a dynamic graph, a map of at least
    5 x 5 (2 x 2 tiles) for every input the graph takes: torch.export specialises a tile count of 1, so where the size
    range reaches maps under 5 pixels the layer stays a plain convolution. (Standard operators: autograd works
    through it.)"""
    if not (kernel_active("winograd") and exporting() and _geometry_fits(x, weight)):
        return False
    if min(weight.shape[:2]) < EXPORT_MIN_CHANNELS:
        return False
    height, width = x.shape[-2:]
    if isinstance(height, int) and isinstance(width, int):  # a fixed size: the measured range, 16 tiles and more
        return _tiles(height) * _tiles(width) >= MIN_TILES
    return _at_least(height, 5) and _at_least(width, 5)


def worthwhile(x: torch.Tensor, weight: torch.Tensor, filters_cached: bool = True) -> bool:
    """Whether a stride-1, padding-1 convolution of `x` (B, C, H, W) with `weight` (K, C, 3, 3) should run through
    `conv3x3`: enabled, inference (no autograd) on CPU in float32 outside graph capture, and a map and channel counts
    large enough for the transforms to pay off (`MIN_CHANNELS`, `MIN_TILES`, `TILE_CHANNELS`; with
    `filters_cached=False`, for filters transformed at every call, also `UNCACHED_MIN_TILES` and
    `UNCACHED_CHANNELS_PER_TILE`)."""
    if capturing() or not kernel_active("winograd") or not _geometry_fits(x, weight):
        return False
    out_channels, channels = weight.shape[:2]
    if min(out_channels, channels) < MIN_CHANNELS:
        return False
    tiles = _tiles(x.shape[-2]) * _tiles(x.shape[-1])
    width = 2 * out_channels * channels / (out_channels + channels)  # (harmonic mean)
    enough_tiles = tiles >= max(MIN_TILES, TILE_CHANNELS / width)
    if not filters_cached:
        enough_tiles = enough_tiles and tiles >= max(UNCACHED_MIN_TILES, channels / UNCACHED_CHANNELS_PER_TILE)
    return (
        enough_tiles
        and x.device.type == "cpu"
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


class Conv2d(torch.nn.Conv2d):
    """`nn.Conv2d` (same parameters and state-dict keys) that runs a dense 3x3 / stride 1 / padding 1 convolution as
    Winograd where `conv3x3_for` picks a form for the input (eager `conv3x3`, or `conv3x3_graph` while exporting),
    through PyTorch's convolution otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (
            self.stride == (1, 1)
            and self.padding == (1, 1)
            and self.dilation == (1, 1)
            and self.groups == 1
            and self.padding_mode == "zeros"
        ):
            winograd = conv3x3_for(x, self.weight, filters_cached=cacheable(self.weight))
            if winograd is conv3x3_graph:
                return conv3x3_graph(x, self.weight, self.bias)
            if winograd is not None:
                filters = cached(self, lambda: transform_filters(self.weight), self.weight)
                return conv3x3(x, self.weight, self.bias, filters=filters)
        return super().forward(x)
