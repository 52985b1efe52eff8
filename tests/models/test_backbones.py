"""Backbones: documented cuts, strides and channels; ImageNet weights from the hub cache or a clear error."""
import math
import os
import urllib.error

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import vgg as tv_vgg

import models.backbones as backbones
from common.errors import UserError
from models.backbones import BACKBONES, ResNet34, TinyCNN, VGG16, build_backbone, feature_shape, hub_weights_path


def _expected(name, height, width):
    if name.startswith("convnext"):
        return (768 if name == "convnext_tiny" else 1024), height // 32, width // 32
    if name == "vgg16":
        return 512, height // 16, width // 16
    channels = 256 if name == "resnet34" else 128
    return channels, math.ceil(height / 8), math.ceil(width / 8)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_output_stride_and_channels(name):
    net = build_backbone(name, pretrained=False).eval()
    for size in [(32, 32), (33, 47), (32, 176), (64, 64)]:
        with torch.no_grad():
            out = net(torch.randn(1, 3, *size))
        assert tuple(out.shape[1:]) == _expected(name, *size), size
        assert out.shape[1] == net.out_channels
        assert feature_shape(net, *size) == tuple(out.shape[1:])


def test_feature_shape_does_not_touch_batchnorm_statistics():
    net = TinyCNN().train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert feature_shape(net, 112, 616) == (128, 14, 77)
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_vgg16_is_features_0_to_29_of_torchvision():
    net = VGG16(pretrained=False)
    reference = tv_vgg.make_layers(tv_vgg.cfgs["D"])
    assert len(net.features) == 30 and len(reference) == 31
    assert [type(m) for m in net.features] == [type(m) for m in reference[:30]]
    assert isinstance(net.features[29], nn.ReLU) and isinstance(reference[30], nn.MaxPool2d)
    assert sum(isinstance(m, nn.MaxPool2d) for m in net.features) == 4
    assert sum(isinstance(m, nn.Conv2d) for m in net.features) == 13
    # State-dict keys use torchvision's indices, so ImageNet weights load by name.
    assert set(net.state_dict()) == {f"features.{k}" for k in reference.state_dict() if int(k.split(".")[0]) < 30}


def test_resnet34_has_no_maxpool_and_stops_after_layer3():
    net = ResNet34(pretrained=False)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())
    assert net.layers[-1][-1].conv2.out_channels == 256
    assert len(net.layers) == 6


def test_registry_lists_valid_names():
    assert BACKBONES.names() == ["vgg16", "resnet34", "tiny", "convnext_tiny", "convnext_base"]
    with pytest.raises(UserError, match="vgg16, resnet34, tiny, convnext_tiny, convnext_base"):
        build_backbone("resnet50", pretrained=False)


def test_tiny_has_no_pretrained_weights():
    with pytest.raises(UserError, match="--no-pretrained"):
        build_backbone("tiny", pretrained=True)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("name", ["vgg16", "resnet34"])
def test_offline_download_failure_is_a_user_error(name, torch_home, monkeypatch):
    def offline(url, dst, *args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(UserError) as info:
        build_backbone(name, pretrained=True)
    message = str(info.value)
    weights = torchvision.models.VGG16_Weights if name == "vgg16" else torchvision.models.ResNet34_Weights
    filename = os.path.basename(weights.IMAGENET1K_V1.url)
    expected_path = os.path.join(str(torch_home), "hub", "checkpoints", filename)
    assert "--no-pretrained" in message
    assert expected_path in message
    assert hub_weights_path(weights.IMAGENET1K_V1.url) == expected_path


def test_socket_timeout_is_bounded_during_download_and_restored(torch_home, monkeypatch):
    import socket

    seen = []

    def offline(url, dst, *args, **kwargs):
        seen.append(socket.getdefaulttimeout())
        raise TimeoutError("timed out")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    before = socket.getdefaulttimeout()
    with pytest.raises(UserError, match="--no-pretrained"):
        build_backbone("resnet34", pretrained=True)
    assert seen == [backbones.DOWNLOAD_TIMEOUT_S]
    assert socket.getdefaulttimeout() == before


def test_resnet34_loads_weights_from_the_hub_cache(torch_home, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the file is cached")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    reference = torchvision.models.resnet34(weights=None)
    path = hub_weights_path(torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url)
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)
    net = build_backbone("resnet34", pretrained=True)
    state = net.state_dict()
    names = {"0": "conv1", "1": "bn1", "3": "layer1", "4": "layer2", "5": "layer3"}
    assert len(state) > 100
    for key, value in state.items():
        index, rest = key.split(".", 2)[1], key.split(".", 2)[2]
        assert torch.equal(value, reference.state_dict()[f"{names[index]}.{rest}"]), key


def test_vgg16_loads_weights_from_the_hub_cache(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    features = tv_vgg.make_layers(tv_vgg.cfgs["D"])
    for module in features:
        if isinstance(module, nn.Conv2d):
            nn.init.normal_(module.weight)
            nn.init.normal_(module.bias)
    saved = {f"features.{k}": v for k, v in features.state_dict().items()}
    saved["classifier.6.weight"] = torch.zeros(10, 4)  # the rest of the file is ignored
    path = hub_weights_path(torchvision.models.VGG16_Weights.IMAGENET1K_V1.url)
    os.makedirs(os.path.dirname(path))
    torch.save(saved, path)
    net = build_backbone("vgg16", pretrained=True)
    assert len(net.state_dict()) == 26
    for key, value in net.state_dict().items():
        assert torch.equal(value, saved[key]), key


def test_corrupt_cached_file_is_a_user_error(torch_home):
    path = hub_weights_path(torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(b"not a checkpoint")
    with pytest.raises(UserError, match="could not be read.*delete that file"):
        build_backbone("resnet34", pretrained=True)


def test_convnext_offline_failure_names_the_cache_path(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file",
                        lambda *a, **k: (_ for _ in ()).throw(urllib.error.URLError("offline")))
    with pytest.raises(UserError) as info:
        build_backbone("convnext_tiny", pretrained=True)
    url = torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1.url
    assert "--no-pretrained" in str(info.value) and hub_weights_path(url) in str(info.value)


def test_convnext_loads_the_features_from_the_hub_cache(torch_home, monkeypatch):
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: pytest.fail("downloaded"))
    reference = torchvision.models.convnext_tiny(weights=None)
    path = hub_weights_path(torchvision.models.ConvNeXt_Tiny_Weights.IMAGENET1K_V1.url)
    os.makedirs(os.path.dirname(path))
    torch.save(reference.state_dict(), path)  # with the classifier, which is dropped
    net = build_backbone("convnext_tiny", pretrained=True)
    for key, value in net.state_dict().items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_cached_files_of_random_bytes_are_user_errors(torch_home):
    """Unpickling arbitrary bytes fails in many ways (UnpicklingError, IndexError, ...): all one message."""
    import numpy as np

    path = hub_weights_path(torchvision.models.ResNet34_Weights.IMAGENET1K_V1.url)
    os.makedirs(os.path.dirname(path))
    for seed in range(20):
        with open(path, "wb") as handle:
            handle.write(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(UserError, match="could not be read"):
            build_backbone("resnet34", pretrained=True)


def test_checkpoints_of_random_bytes_are_user_errors(tmp_path):
    import numpy as np

    from helper.checkpoint import load_checkpoint

    path = tmp_path / "noise.pth"
    for seed in range(20):
        path.write_bytes(np.random.default_rng(seed).bytes(4096))
        with pytest.raises(UserError, match="not a readable checkpoint"):
            load_checkpoint(str(path))
