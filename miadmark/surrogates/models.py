"""Small classifiers written in plain torch (no torchvision), trained from scratch at low resolution.

Every model takes (N, in_ch, S, S) in [0, 1] and exposes
  features(x) -> spatial feature map (N, C, h, w)   (Grad-CAM, feature-level attacks)
  head(fmap)  -> logits
  forward(x)  = head(features(x))
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Base(nn.Module):
    def __init__(self, in_ch: int, num_classes: int, in_size: int):
        super().__init__()
        self.in_ch, self.num_classes, self.in_size = in_ch, num_classes, in_size

    def norm(self, x):
        return (x - 0.5) / 0.25

    def forward(self, x):
        return self.head(self.features(x))

    def pooled(self, fmap):
        return fmap.mean((2, 3))


def conv_bn(ci, co, k=3, s=1, groups=1, act=nn.ReLU):
    return nn.Sequential(nn.Conv2d(ci, co, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(co),
                         act(inplace=True) if act is not None else nn.Identity())


class BasicBlock(nn.Module):
    def __init__(self, ci, co, s):
        super().__init__()
        self.c1 = conv_bn(ci, co, 3, s)
        self.c2 = conv_bn(co, co, 3, 1, act=None)
        self.sc = nn.Identity() if (ci == co and s == 1) else conv_bn(ci, co, 1, s, act=None)

    def forward(self, x):
        return F.relu(self.c2(self.c1(x)) + self.sc(x))


class ResNet(Base):
    """ResNet-10/18-style: stride-2 stem, four stages of BasicBlocks."""

    def __init__(self, in_ch, num_classes, in_size, widths=(16, 32, 64, 128), blocks=(1, 1, 1, 1)):
        super().__init__(in_ch, num_classes, in_size)
        self.stem = conv_bn(in_ch, widths[0], 3, 2)
        layers, ci = [], widths[0]
        for i, (w, b) in enumerate(zip(widths, blocks)):
            for j in range(b):
                layers.append(BasicBlock(ci, w, 2 if (j == 0 and i > 0) else 1))
                ci = w
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(ci, num_classes)
        self.drop = nn.Dropout(0.2)

    @property
    def cam_layer(self):
        return self.layers[-2]

    def features(self, x):
        return self.layers(self.stem(self.norm(x)))

    def head(self, fmap):
        return self.fc(self.drop(self.pooled(fmap)))


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.f1, self.f2 = nn.Conv2d(c, max(8, c // r), 1), nn.Conv2d(max(8, c // r), c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.f2(F.relu(self.f1(s))))


class InvRes(nn.Module):
    def __init__(self, ci, exp, co, k, s, se, act):
        super().__init__()
        self.use_res = s == 1 and ci == co
        layers = [] if exp == ci else [conv_bn(ci, exp, 1, act=act)]
        layers += [conv_bn(exp, exp, k, s, groups=exp, act=act)]
        if se:
            layers.append(SE(exp))
        layers.append(conv_bn(exp, co, 1, act=None))
        self.body = nn.Sequential(*layers)

    def forward(self, x):
        y = self.body(x)
        return x + y if self.use_res else y


class MobileNetV3(Base):
    """MobileNetV3-Small-like (inverted residuals, squeeze-excite, hard-swish)."""

    CFG = [  # k, exp, out, se, act, stride
        (3, 16, 16, True, nn.ReLU, 1), (3, 64, 24, False, nn.ReLU, 2), (3, 88, 24, False, nn.ReLU, 1),
        (5, 96, 40, True, nn.Hardswish, 2), (5, 192, 40, True, nn.Hardswish, 1),
        (5, 144, 48, True, nn.Hardswish, 1), (5, 288, 96, True, nn.Hardswish, 2),
        (5, 384, 96, True, nn.Hardswish, 1),
    ]

    def __init__(self, in_ch, num_classes, in_size):
        super().__init__(in_ch, num_classes, in_size)
        self.stem = conv_bn(in_ch, 16, 3, 2, act=nn.Hardswish)
        ci, layers = 16, []
        for k, e, o, se, act, s in self.CFG:
            layers.append(InvRes(ci, e, o, k, s, se, act))
            ci = o
        self.layers = nn.Sequential(*layers, conv_bn(ci, 288, 1, act=nn.Hardswish))
        self.fc = nn.Sequential(nn.Linear(288, 256), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(256, num_classes))

    @property
    def cam_layer(self):
        return self.layers[5]

    def features(self, x):
        return self.layers(self.stem(self.norm(x)))

    def head(self, fmap):
        return self.fc(self.pooled(fmap))


class ViT(Base):
    """A small plain ViT (Dosovitskiy et al. 2021): 16x16 patch embedding, learned positions, pre-norm
    transformer, mean pooling over the tokens (no cls token, so the token grid is the feature map that
    Grad-CAM and feature-level losses read, as for the convolutional nets)."""

    def __init__(self, in_ch, num_classes, in_size, dim=128, depth=6, heads=4, patch=16):
        super().__init__(in_ch, num_classes, in_size)
        self.patch = nn.Conv2d(in_ch, dim, patch, patch)
        self.transformer(in_size // patch, dim, depth, heads)

    def transformer(self, grid, dim, depth, heads):
        """The token part shared with ConvViT: positions on a grid x grid map, blocks, norm, classifier."""
        self.grid = max(1, grid)
        self.pos = nn.Parameter(torch.zeros(1, self.grid * self.grid, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, dim * 2, dropout=0.1, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, self.num_classes)

    def embed(self, x):
        return self.patch(self.norm(x))

    def features(self, x):
        t = self.embed(x)
        n, c, h, w = t.shape
        t = t.flatten(2).transpose(1, 2)
        pos = self.pos if h * w == self.pos.shape[1] else F.interpolate(  # another input size: resample
            self.pos.transpose(1, 2).reshape(1, c, self.grid, self.grid), size=(h, w), mode="bilinear",
            align_corners=False).flatten(2).transpose(1, 2)
        t = self.blocks(t + pos)
        return self.ln(t).transpose(1, 2).reshape(n, c, h, w)

    def head(self, fmap):
        return self.fc(self.pooled(fmap))


class ConvViT(ViT):
    """A tiny hybrid ViT: two stride-2 conv stem layers, then a transformer over 2x2 patches."""

    def __init__(self, in_ch, num_classes, in_size, dim=128, depth=4, heads=4):
        Base.__init__(self, in_ch, num_classes, in_size)  # ViT's patch embedding is replaced by the stem
        self.stem = nn.Sequential(conv_bn(in_ch, 32, 3, 2), conv_bn(32, 64, 3, 2),
                                  nn.Conv2d(64, dim, 2, 2))
        self.transformer(in_size // 8, dim, depth, heads)

    def embed(self, x):
        return self.stem(self.norm(x))


class VGG(Base):
    """A plain VGG-style net (black-box evaluation architecture)."""

    def __init__(self, in_ch, num_classes, in_size, widths=(32, 64, 128, 192)):
        super().__init__(in_ch, num_classes, in_size)
        layers, ci = [], in_ch
        for i, w in enumerate(widths):
            layers += [conv_bn(ci, w, 3, 1), conv_bn(w, w, 3, 1) if i >= 2 else nn.Identity(), nn.MaxPool2d(2)]
            ci = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(ci, num_classes))

    @property
    def cam_layer(self):
        return self.body[-4]

    def features(self, x):
        return self.body(self.norm(x))

    def head(self, fmap):
        return self.fc(self.pooled(fmap))


ARCHS = {
    "resnet10": lambda c, n, s: ResNet(c, n, s),
    "resnet18": lambda c, n, s: ResNet(c, n, s, widths=(24, 48, 96, 192), blocks=(2, 2, 2, 2)),
    "mobilenetv3": MobileNetV3,
    "convvit": ConvViT,
    "vit": ViT,
    "vgg": VGG,
}


def build(arch: str, in_ch: int, num_classes: int, in_size: int) -> Base:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(sorted(ARCHS))})")
    return ARCHS[arch](in_ch, num_classes, in_size)
