"""Every registered transformation block and backbone, found from the registries (as timm does):
built into the whole model, run forward and backward, every parameter receives a finite gradient.

Registering a block or backbone adds it here; nothing keeps a list of names by hand.
"""
import pytest
import torch

from models import BACKBONES, TRANSFORMS, build_model
from models.heads import HEADS

SMALL = {"pretrained": False, "sate_size": [48, 48], "pano_size": [32, 64], "attention_maps": 2}


def _forward_backward(cfg):
    model = build_model({**SMALL, **cfg}).train()
    street = torch.randn(2, 3, 32, 64)
    satellite = torch.randn(2, 3, 48, 48)
    street_desc, sat_desc = model(street, satellite)
    assert street_desc.shape == sat_desc.shape == (2, model.descriptor_dim)
    assert torch.isfinite(street_desc).all() and torch.isfinite(sat_desc).all()
    (street_desc @ sat_desc.t()).diagonal().sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    return model


@pytest.mark.parametrize("transform", TRANSFORMS.names())
def test_every_transform_in_the_whole_model(transform):
    model = _forward_backward({"transform": transform, "backbone": "tiny"})
    assert type(model.transform) is type(TRANSFORMS.get(transform)(model.cfg))


#: Backbones too large for the default CPU run (convnext_base: 88M parameters, ~15 s here): `make test-all`.
LARGE = {"convnext_base"}


@pytest.mark.parametrize("backbone", [pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name
                                      for name in BACKBONES.names()])
def test_every_backbone_in_the_whole_model(backbone):
    model = _forward_backward({"transform": "polar", "backbone": backbone})
    assert type(model.street_backbone) is type(BACKBONES.get(backbone)(False))


@pytest.mark.parametrize("head", HEADS.names())
@pytest.mark.parametrize("shared_backbone", [False, True])
def test_every_head_in_the_whole_model(head, shared_backbone):
    model = _forward_backward({"transform": "tps", "backbone": "tiny", "head": head,
                               "shared_backbone": shared_backbone})
    assert type(model.street_attention) is HEADS.get(head)
    assert (model.street_backbone is model.satellite_backbone) == shared_backbone


def test_the_registries_are_not_empty():
    assert len(TRANSFORMS.names()) >= 5 and len(BACKBONES.names()) >= 3 and len(HEADS.names()) >= 2
