"""Convolutional backbones behind the ``BACKBONES`` registry.

Every backbone maps ``B x 3 x H x W`` (ImageNet-normalised RGB) to a feature map
``B x out_channels x h x w`` and exposes ``out_channels`` and ``stride`` (nominal output
stride). Constructors take ``pretrained: bool``; ImageNet weights come from torchvision's
weights API through the torch.hub cache (``torch.hub.get_dir()/checkpoints``). A failed
download raises :class:`common.errors.UserError`; we never fall back to random weights.
"""
from __future__ import annotations

import functools
import itertools
import os
import socket
from typing import Tuple
from urllib.parse import urlparse

import torch
from torch import nn
from torch.func import functional_call

from common.errors import UserError
from models.registry import Registry

BACKBONES = Registry("backbone")

DOWNLOAD_TIMEOUT_S = 60.0


def hub_weights_path(url: str) -> str:
    """Where torch.hub caches (and looks for) the weights file of ``url``."""
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(url).path))


def _replace_cached(backbone: str, path: str, url: str, problem: str) -> UserError:
    return UserError(f"the cached ImageNet weights of backbone {backbone!r} at {path} {problem}; delete that file "
                     f"and place a fresh copy of {url} there, or train from scratch with --no-pretrained")


def load_imagenet_state_dict(weights: "torchvision.models.WeightsEnum", backbone: str) -> dict:
    """State dict of torchvision ``weights``, from the hub cache or downloaded into it.

    The download runs under a bounded socket timeout (``DOWNLOAD_TIMEOUT_S``, restored
    afterwards). Any network or file error becomes a :class:`UserError` that names
    ``--no-pretrained`` and the exact cache path to place the file at for offline use.
    """
    url = weights.url
    path = hub_weights_path(url)
    cached = os.path.exists(path)
    previous_timeout = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        state = torch.hub.load_state_dict_from_url(
            url, progress=False, check_hash=True, map_location="cpu", weights_only=True
        )
    # URLError, HTTPError and socket timeouts are OSErrors; a hash mismatch is a RuntimeError; a
    # cached file that is not a torch file can raise almost anything while it is unpickled
    # (UnpicklingError, EOFError, IndexError, KeyError, ...).
    except Exception as exc:  # noqa: BLE001 - every failure here is the cache's or the network's
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        if cached:  # torch's own advice (weights_only=False) is wrong for a corrupt download
            raise _replace_cached(backbone, path, url, "could not be read (not a torch weights file, or "
                                                       "truncated)") from None
        raise UserError(
            f"could not download the ImageNet weights of backbone {backbone!r} from {url} ({reason}). "
            f"Either train from scratch with --no-pretrained, or download that file on a machine with "
            f"internet access and place it at {path} (torch.hub cache, set by $TORCH_HOME); it then loads offline"
        ) from exc
    finally:
        socket.setdefaulttimeout(previous_timeout)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise _replace_cached(backbone, path, url, "is not a state dict of tensors")
    return state


def load_imagenet_weights(module: nn.Module, weights: "torchvision.models.WeightsEnum", backbone: str,
                          prefix: str = "") -> None:
    """Load the ImageNet ``weights`` entries under ``prefix`` into ``module`` strictly; a cached
    file whose keys or shapes do not fit is a :class:`UserError` saying to replace it."""
    state = load_imagenet_state_dict(weights, backbone)
    state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    wrong = sorted(k for k in set(expected) & set(state) if expected[k].shape != state[k].shape)
    if missing or wrong:
        detail = (f"missing {len(missing)} of {len(expected)} weights, e.g. {prefix}{missing[0]}" if missing
                  else f"{len(wrong)} weights of the wrong shape, e.g. {prefix}{wrong[0]}")
        raise _replace_cached(backbone, hub_weights_path(weights.url), weights.url,
                              f"does not match torchvision's {backbone} ({detail})")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)  # extra entries (the classifier) dropped


def feature_shape(backbone: nn.Module, height: int, width: int) -> Tuple[int, int, int]:
    """``(channels, h, w)`` of ``backbone`` for an ``height x width`` input.

    Runs the forward pass on the ``meta`` device (no compute, no memory, module state
    such as BatchNorm running statistics untouched).
    """
    state = {
        name: torch.empty_like(tensor, device="meta")
        for name, tensor in itertools.chain(backbone.named_parameters(), backbone.named_buffers())
    }
    out = functional_call(backbone, state, (torch.empty(1, 3, int(height), int(width), device="meta"),))
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


class VGG16(nn.Module):
    """SAFA's VGG16 backbone: torchvision ``vgg16().features[:30]``.

    Kept: features indices 0-29 = conv1_1 ... conv5_3 with their ReLUs and the four
    max-pools at indices 4, 9, 16, 23; dropped: index 30 (pool5) and the classifier.
    This is ``VGG16_conv`` of SAFA's ``script/VGG.py`` (conv layers up to conv5_3, no
    pool5). Output: 512 channels, stride 16, ``h = floor(H / 16)``, ``w = floor(W / 16)``
    (torchvision's floor-mode pools; 112 x 616 -> 7 x 38, 256 x 256 -> 16 x 16).

    Differences from SAFA's TensorFlow code, deliberate: SAFA's ``spatial_net.SAFA``
    max-pools the conv5_3 map once more (2x2, 'SAME') before the spatial-aware attention
    (stride 32, 4 x 20 for 112 x 616), and applies dropout (keep 0.8 in training) after
    conv4_x / conv5_x; we do neither (finer attention grid, deterministic features,
    inputs down to 32 px). Pretrained weights: ``VGG16_Weights.IMAGENET1K_V1``.
    """

    stride = 16
    out_channels = 512

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        import torchvision
        from torchvision.models import vgg as tv_vgg

        # Only the convolutional part is built (torchvision's 120M-parameter classifier is never created).
        features = tv_vgg.make_layers(tv_vgg.cfgs["D"], batch_norm=False)
        for module in features.modules():  # torchvision's VGG initialisation of conv layers
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        if pretrained:
            load_imagenet_weights(features, torchvision.models.VGG16_Weights.IMAGENET1K_V1, "vgg16", "features.")
        self.features = features[:30]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class ResNet34(nn.Module):
    """ResNet34 variant of Toker et al. / the seed: stem without max-pool, layer1-3.

    Kept from torchvision ``resnet34``: ``conv1`` (7x7, stride 2), ``bn1``, ``relu``,
    ``layer1`` (stride 1), ``layer2`` (stride 2), ``layer3`` (stride 2); dropped:
    ``maxpool``, ``layer4``, ``avgpool``, ``fc``. Output: 256 channels, stride 8,
    ``h = ceil(H / 8)``, ``w = ceil(W / 8)`` (112 x 616 -> 14 x 77). Pretrained weights:
    ``ResNet34_Weights.IMAGENET1K_V1``.
    """

    stride = 8
    out_channels = 256

    def __init__(self, pretrained: bool = True) -> None:
        super().__init__()
        import torchvision

        net = torchvision.models.resnet34(weights=None)
        if pretrained:
            load_imagenet_weights(net, torchvision.models.ResNet34_Weights.IMAGENET1K_V1, "resnet34")
        self.layers = nn.Sequential(net.conv1, net.bn1, net.relu, net.layer1, net.layer2, net.layer3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TinyCNN(nn.Module):
    """Small fast CNN for CPU demos and tests (no pretrained weights).

    Four 3x3 conv + GroupNorm(8) + ReLU blocks with 32, 64, 128, 128 channels and strides
    2, 2, 2, 1 (padding 1). Output: 128 channels, stride 8, ``h = ceil(H / 8)``,
    ``w = ceil(W / 8)``. GroupNorm (per sample) keeps small batches stable and makes
    N-process DDP training exactly equal to one process on the joined batch.
    """

    stride = 8
    out_channels = 128

    def __init__(self, pretrained: bool = False) -> None:
        super().__init__()
        if pretrained:
            raise UserError(
                "backbone 'tiny' has no ImageNet weights (it is a small demo/test network); "
                "pass --no-pretrained, or choose --backbone vgg16 or resnet34 for pretrained weights"
            )
        layers = []
        in_ch = 3
        for out_ch, stride in ((32, 2), (64, 2), (128, 2), (128, 1)):
            conv = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
            layers += [conv, nn.GroupNorm(8, out_ch), nn.ReLU(inplace=True)]
            in_ch = out_ch
        self.layers = nn.Sequential(*layers)
        for module in self.layers.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ConvNeXt(nn.Module):
    """torchvision ConvNeXt ``features`` (stem and the four stages; no pooling, no classifier),
    Sample4Geo's backbone: output stride 32, ``h = H // 32``, ``w = W // 32``; 768 channels
    (tiny) or 1024 (base). LayerNorm normalises per sample (no batch statistics). Pretrained
    weights: ``ConvNeXt_{Tiny,Base}_Weights.IMAGENET1K_V1``.
    """

    stride = 32
    CHANNELS = {"tiny": 768, "base": 1024}

    def __init__(self, variant: str, pretrained: bool = True) -> None:
        super().__init__()
        import torchvision

        name = f"convnext_{variant}"
        net = getattr(torchvision.models, name)(weights=None)
        if pretrained:
            weights = getattr(torchvision.models, f"ConvNeXt_{variant.capitalize()}_Weights").IMAGENET1K_V1
            load_imagenet_weights(net.features, weights, name, "features.")
        self.features = net.features
        self.out_channels = self.CHANNELS[variant]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


BACKBONES.register("vgg16")(VGG16)
BACKBONES.register("resnet34")(ResNet34)
BACKBONES.register("tiny")(TinyCNN)
for _variant in ConvNeXt.CHANNELS:
    BACKBONES.register(f"convnext_{_variant}")(functools.partial(ConvNeXt, _variant))


def build_backbone(name: str, pretrained: bool) -> nn.Module:
    """Backbone ``name`` from the registry (unknown names raise a UserError listing valid ones)."""
    return BACKBONES.get(name)(pretrained=pretrained)
