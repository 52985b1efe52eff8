"""Parameter counts of the model at CVUSA sizes, per branch and per transformation block.

Usage: ``python benchmarks/model_params.py [--backbone vgg16]``. Prints one JSON line.
Configuration: satellite 256 x 256, panorama 112 x 616, 8 attention maps, TPS 6 x 10,
3 composed-affine stages, no pretrained weights (counts do not depend on them).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from models import TRANSFORMS, build_model, count_parameters  # noqa: E402


def breakdown(model) -> dict:
    """Parameter counts: total, street branch, satellite branch (incl. transform), transform, heads."""
    street = count_parameters(model.street_backbone) + count_parameters(model.street_attention)
    transform = count_parameters(model.transform)
    satellite = transform + count_parameters(model.satellite_backbone) + count_parameters(model.satellite_attention)
    return {
        "total": count_parameters(model),
        "street_branch": street,
        "satellite_branch": satellite,
        "transform": transform,
        "backbone_each": count_parameters(model.street_backbone),
        "attention_each": count_parameters(model.street_attention),
        "descriptor_dim": model.descriptor_dim,
        "feature_map": list(model.street_attention.feature_size),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vgg16", help="backbone to count (vgg16, resnet34, tiny)")
    args = parser.parse_args()
    base = {
        "backbone": args.backbone,
        "pretrained": False,
        "sate_size": [256, 256],
        "pano_size": [112, 616],
        "attention_maps": 8,
        "tps_grid": [6, 10],
        "stn_stages": 3,
    }
    per_transform = {name: breakdown(build_model(dict(base, transform=name))) for name in TRANSFORMS.names()}
    result = {
        "benchmark": "model_params",
        "config": base,
        f"{args.backbone}_tps": per_transform["tps"],
        "per_transform": per_transform,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
