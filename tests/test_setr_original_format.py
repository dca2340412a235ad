"""Original fudan-zvg/SETR formats without a golden fixture (SETR-MLA's `VIT_MLA` + `VIT_MLAHead` +
`VIT_MLA_AUXIHead`, SETR-Naive's `VisionTransformerUpHead(num_conv=2)`): random checkpoints in the original key
layout are converted and compared with a functional re-statement of the original forward passes (written from the
original code: mmseg/models/backbones/vit.py, vit_mla.py, decode_heads/vit_up_head.py, vit_mla_head.py,
vit_mla_auxi_head.py), including the auxiliary heads through the training loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from hf_segmodels.setr.convert_setr import convert_setr_checkpoint

WIDTH, DEPTH, HEADS, IMG, CLASSES = 32, 4, 2, 64, 5
MLA_INDEX, MLA_CHANNELS, MLAHEAD_CHANNELS = (0, 1, 2, 3), 16, 8


def _bn(state, prefix, channels):
    state[prefix + "weight"] = 1 + 0.1 * torch.randn(channels)
    state[prefix + "bias"] = 0.1 * torch.randn(channels)
    state[prefix + "running_mean"] = 0.1 * torch.randn(channels)
    state[prefix + "running_var"] = 0.5 + torch.rand(channels)
    state[prefix + "num_batches_tracked"] = torch.tensor(7)


def _conv(state, key, out_channels, in_channels, kernel, bias=False):
    state[key + ".weight"] = torch.randn(out_channels, in_channels, kernel, kernel) / math.sqrt(in_channels * kernel**2)
    if bias:
        state[key + ".bias"] = 0.1 * torch.randn(out_channels)


def _backbone(state):
    state["backbone.cls_token"] = 0.2 * torch.randn(1, 1, WIDTH)
    state["backbone.pos_embed"] = 0.2 * torch.randn(1, (IMG // 16) ** 2 + 1, WIDTH)
    _conv(state, "backbone.patch_embed.proj", WIDTH, 3, 16, bias=True)
    for i in range(DEPTH):
        p = f"backbone.blocks.{i}."
        for norm in ("norm1", "norm2"):
            state[p + norm + ".weight"] = 1 + 0.1 * torch.randn(WIDTH)
            state[p + norm + ".bias"] = 0.1 * torch.randn(WIDTH)
        for name, (rows, cols) in {"attn.qkv": (3 * WIDTH, WIDTH), "attn.proj": (WIDTH, WIDTH),
                                   "mlp.fc1": (4 * WIDTH, WIDTH), "mlp.fc2": (WIDTH, 4 * WIDTH)}.items():
            state[p + name + ".weight"] = torch.randn(rows, cols) / math.sqrt(cols)
            state[p + name + ".bias"] = 0.1 * torch.randn(rows)


def _blocks(state, x, drop_cls):
    """The original VisionTransformer / VIT_MLA forward: every block's tokens."""
    batch = x.shape[0]
    x = F.conv2d(x, state["backbone.patch_embed.proj.weight"], state["backbone.patch_embed.proj.bias"], stride=16)
    x = torch.cat([state["backbone.cls_token"].expand(batch, -1, -1), x.flatten(2).transpose(1, 2)], 1)
    x = x + state["backbone.pos_embed"]
    if drop_cls:
        x = x[:, 1:]
    outputs = []
    for i in range(DEPTH):
        p = f"backbone.blocks.{i}."
        n = x.shape[1]
        h = F.layer_norm(x, (WIDTH,), state[p + "norm1.weight"], state[p + "norm1.bias"], 1e-6)
        q, k, v = F.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"]).reshape(
            batch, n, 3, HEADS, WIDTH // HEADS).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * (WIDTH // HEADS) ** -0.5).softmax(-1)
        h = (attention @ v).transpose(1, 2).reshape(batch, n, WIDTH)
        x = x + F.linear(h, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"])
        h = F.layer_norm(x, (WIDTH,), state[p + "norm2.weight"], state[p + "norm2.bias"], 1e-6)
        h = F.linear(F.gelu(F.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"])),
                     state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"])
        x = x + h
        outputs.append(x)
    return outputs


def _to_2d(x):
    n, hw, c = x.shape
    side = int(math.sqrt(hw))
    return x.transpose(1, 2).reshape(n, c, side, side)


def _conv_bn_relu(state, x, conv, bn, padding=0):
    x = F.conv2d(x, state[conv + ".weight"], state.get(conv + ".bias"), padding=padding)
    x = F.batch_norm(x, state[bn + ".running_mean"], state[bn + ".running_var"], state[bn + ".weight"],
                     state[bn + ".bias"], False, 0.0, 1e-5)
    return F.relu(x)


# --- SETR-MLA -----------------------------------------------------------------------------------------------------

_LOSS = "loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=0.4)"
_MLA_AUX = ", ".join(
    f"dict(type='VIT_MLA_AUXIHead', in_channels={MLA_CHANNELS}, channels=512, in_index={i}, img_size={IMG}, "
    f"num_classes={CLASSES}, align_corners=False, {_LOSS})"
    for i in range(4)
)
MLA_CONFIG = f"""
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='VIT_MLA', model_name='vit_large_patch16_384', img_size={IMG}, patch_size=16, in_chans=3,
                  embed_dim={WIDTH}, depth={DEPTH}, num_heads={HEADS}, num_classes={CLASSES}, drop_rate=0.0,
                  norm_cfg=dict(type='BN', requires_grad=True), pos_embed_interp=True, align_corners=False,
                  mla_channels={MLA_CHANNELS}, mla_index={MLA_INDEX}),
    decode_head=dict(type='VIT_MLAHead', in_channels={WIDTH}, channels=512, img_size={IMG},
                     mla_channels={MLA_CHANNELS}, mlahead_channels={MLAHEAD_CHANNELS}, num_classes={CLASSES},
                     norm_cfg=dict(type='BN', requires_grad=True), align_corners=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=[{_MLA_AUX}])
test_cfg = dict(mode='slide', crop_size=({IMG}, {IMG}), stride=(48, 48))
"""


def _mla_state():
    state = {}
    _backbone(state)
    for i in range(4):
        state[f"backbone.norm_{i}.weight"] = 1 + 0.1 * torch.randn(WIDTH)
        state[f"backbone.norm_{i}.bias"] = 0.1 * torch.randn(WIDTH)
    for k in range(2, 6):
        _conv(state, f"backbone.mla.mla_p{k}_1x1.0", MLA_CHANNELS, WIDTH, 1)
        _bn(state, f"backbone.mla.mla_p{k}_1x1.1.", MLA_CHANNELS)
        _conv(state, f"backbone.mla.mla_p{k}.0", MLA_CHANNELS, MLA_CHANNELS, 3)
        _bn(state, f"backbone.mla.mla_p{k}.1.", MLA_CHANNELS)
        _conv(state, f"decode_head.mlahead.head{k}.0", MLAHEAD_CHANNELS, MLA_CHANNELS, 3)
        _bn(state, f"decode_head.mlahead.head{k}.1.", MLAHEAD_CHANNELS)
        _conv(state, f"decode_head.mlahead.head{k}.3", MLAHEAD_CHANNELS, MLAHEAD_CHANNELS, 3)
        _bn(state, f"decode_head.mlahead.head{k}.4.", MLAHEAD_CHANNELS)
    _conv(state, "decode_head.cls", CLASSES, 4 * MLAHEAD_CHANNELS, 3, bias=True)
    _conv(state, "decode_head.conv_seg", CLASSES, 512, 1, bias=True)  # created by BaseDecodeHead, never used
    for j in range(4):
        _conv(state, f"auxiliary_head.{j}.aux", CLASSES, MLA_CHANNELS, 1)
        _conv(state, f"auxiliary_head.{j}.conv_seg", CLASSES, 512, 1, bias=True)
    return state


def _mla_reference(state, x):
    """VIT_MLA (with Conv_MLA) + VIT_MLAHead + VIT_MLA_AUXIHead, eval mode: logits and auxiliary logits."""
    outputs = _blocks(state, x, drop_cls=True)
    c = [F.layer_norm(outputs[index], (WIDTH,), state[f"backbone.norm_{i}.weight"], state[f"backbone.norm_{i}.bias"],
                      1e-6) for i, index in enumerate(MLA_INDEX)]
    p = {k: _conv_bn_relu(state, _to_2d(c[k - 2]), f"backbone.mla.mla_p{k}_1x1.0", f"backbone.mla.mla_p{k}_1x1.1")
         for k in range(2, 6)}
    sums = {5: p[5]}
    for k in (4, 3, 2):
        sums[k] = sums[k + 1] + p[k]
    mla = {k: _conv_bn_relu(state, sums[k], f"backbone.mla.mla_p{k}.0", f"backbone.mla.mla_p{k}.1", padding=1)
           for k in range(2, 6)}
    heads = []
    for k in range(2, 6):
        h = _conv_bn_relu(state, mla[k], f"decode_head.mlahead.head{k}.0", f"decode_head.mlahead.head{k}.1", 1)
        h = _conv_bn_relu(state, h, f"decode_head.mlahead.head{k}.3", f"decode_head.mlahead.head{k}.4", 1)
        heads.append(F.interpolate(h, 4 * h.shape[-1], mode="bilinear", align_corners=True))
    logits = F.conv2d(torch.cat(heads, 1), state["decode_head.cls.weight"], state["decode_head.cls.bias"], padding=1)
    logits = F.interpolate(logits, size=IMG, mode="bilinear", align_corners=False)
    auxiliary = [F.interpolate(F.conv2d(mla[j + 2], state[f"auxiliary_head.{j}.aux.weight"]), size=IMG,
                               mode="bilinear", align_corners=False) for j in range(4)]
    return logits, auxiliary


# --- SETR-Naive ---------------------------------------------------------------------------------------------------

_NAIVE_AUX = ", ".join(
    f"dict(type='VisionTransformerUpHead', in_channels={WIDTH}, channels=512, in_index={i}, img_size={IMG}, "
    f"embed_dim={WIDTH}, num_classes={CLASSES}, norm_cfg=dict(type='BN', requires_grad=True), num_conv=2, "
    f"upsampling_method='bilinear', align_corners=False, conv3x3_conv1x1=False, {_LOSS})"
    for i in (0, 2)
)
NAIVE_CONFIG = f"""
model = dict(
    type='EncoderDecoder',
    backbone=dict(type='VisionTransformer', model_name='vit_large_patch16_384', img_size={IMG}, patch_size=16,
                  in_chans=3, embed_dim={WIDTH}, depth={DEPTH}, num_heads={HEADS}, num_classes={CLASSES},
                  drop_rate=0.0, norm_cfg=dict(type='BN', requires_grad=True), pos_embed_interp=True,
                  align_corners=False),
    decode_head=dict(type='VisionTransformerUpHead', in_channels={WIDTH}, channels=512, in_index=3, img_size={IMG},
                     embed_dim={WIDTH}, num_classes={CLASSES}, norm_cfg=dict(type='BN', requires_grad=True),
                     num_conv=2, upsampling_method='bilinear', align_corners=False, conv3x3_conv1x1=False,
                     loss_decode=dict(type='CrossEntropyLoss', use_sigmoid=False, loss_weight=1.0)),
    auxiliary_head=[{_NAIVE_AUX}])
img_norm_cfg = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='MultiScaleFlipAug', img_scale=(2048, 480), flip=False,
         transforms=[dict(type='Resize', keep_ratio=True), dict(type='RandomFlip'),
                     dict(type='Normalize', **img_norm_cfg), dict(type='ImageToTensor', keys=['img'])]),
]
"""


def _naive_state():
    state = {}
    _backbone(state)
    for prefix in ("decode_head", "auxiliary_head.0", "auxiliary_head.1"):
        state[f"{prefix}.norm.weight"] = 1 + 0.1 * torch.randn(WIDTH)
        state[f"{prefix}.norm.bias"] = 0.1 * torch.randn(WIDTH)
        _conv(state, f"{prefix}.conv_0", 256, WIDTH, 1, bias=True)
        _bn(state, f"{prefix}.syncbn_fc_0.", 256)
        _conv(state, f"{prefix}.conv_1", CLASSES, 256, 1, bias=True)
        _conv(state, f"{prefix}.conv_seg", CLASSES, 512, 1, bias=True)
    return state


def _naive_reference(state, x):
    """VisionTransformer + VisionTransformerUpHead(num_conv=2, num_upsampe_layer=1, conv3x3_conv1x1=False)."""
    outputs = _blocks(state, x, drop_cls=False)

    def head(prefix, tokens):
        tokens = F.layer_norm(tokens[:, 1:], (WIDTH,), state[f"{prefix}.norm.weight"], state[f"{prefix}.norm.bias"],
                              1e-6)
        h = _conv_bn_relu(state, _to_2d(tokens), f"{prefix}.conv_0", f"{prefix}.syncbn_fc_0")
        h = F.conv2d(h, state[f"{prefix}.conv_1.weight"], state[f"{prefix}.conv_1.bias"])
        return F.interpolate(h, size=IMG, mode="bilinear", align_corners=False)

    return head("decode_head", outputs[3]), [head("auxiliary_head.0", outputs[0]), head("auxiliary_head.1", outputs[2])]


@pytest.mark.parametrize(
    "name, config_text, make_state, reference, layers",
    [
        ("mla", MLA_CONFIG, _mla_state, _mla_reference, [0, 1, 2, 3]),
        ("naive", NAIVE_CONFIG, _naive_state, _naive_reference, [0, 2]),
    ],
    ids=["mla", "naive"],
)
def test_original_format_matches_the_original_forward(tmp_path, name, config_text, make_state, reference, layers):
    torch.manual_seed(5)
    state = make_state()
    torch.save({"meta": {"CLASSES": [f"c{i}" for i in range(CLASSES)]}, "state_dict": state}, tmp_path / "ckpt.pth")
    (tmp_path / "config.py").write_text(config_text)
    model, processor = convert_setr_checkpoint(tmp_path / "ckpt.pth", tmp_path / "config.py", source="original")
    assert model.config.decoder_type == name and model.config.auxiliary_layer_indices == layers
    # The test scale of the original MultiScaleFlipAug pipeline (default: ADE20K's 512 / 2048).
    assert (processor.size.shortest_edge, processor.size.longest_edge) == ((480 if name == "naive" else 512), 2048)
    assert model.config.id2label[4] == "c4"

    pixel_values = torch.randn(2, 3, IMG, IMG)
    labels = torch.randint(0, CLASSES, (2, IMG, IMG))
    labels[1, :10] = 255
    with torch.no_grad():
        expected, auxiliary = reference(state, pixel_values)
        torch.testing.assert_close(model.full_resolution_logits(pixel_values), expected, atol=1e-4, rtol=0)
        loss = model(pixel_values, labels=labels).loss
    expected_loss = F.cross_entropy(expected, labels, ignore_index=255) + sum(
        0.4 * F.cross_entropy(aux, labels, ignore_index=255) for aux in auxiliary)
    torch.testing.assert_close(loss, expected_loss, atol=1e-4, rtol=0)
