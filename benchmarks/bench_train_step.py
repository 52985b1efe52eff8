"""Training-step throughput of the SAFA model (default: VGG16 + TPS at CVUSA sizes).

Times the project's real training step (:func:`helper.engine.train_step`: loss, backward,
Adam update) on random inputs already on the device, so the number is the model's speed, not the
loader's. Variants, measured in the same run: fp32 (NCHW, the baseline), fp32 +
channels_last, and bf16 / fp16 autocast + channels_last (CUDA only). Prints ONE JSON line.

    python benchmarks/bench_train_step.py                 # CUDA when available
    python benchmarks/bench_train_step.py --device cpu --backbone tiny --batch_size 8 --steps 3
    python benchmarks/bench_train_step.py --chunk_size 8    # gradient caching (compare peak memory)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from helper.distributed import DistEnv  # noqa: E402
from helper.engine import train_step  # noqa: E402
from helper.objective import Objective, ObjectiveConfig  # noqa: E402
from models import build_model, count_parameters  # noqa: E402


def run_variant(args, device: torch.device, amp: str, channels_last: bool) -> dict:
    cfg = {"transform": args.transform, "backbone": args.backbone, "pretrained": False,
           "sate_size": [args.sate, args.sate], "pano_size": [args.pano_h, args.pano_w]}
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    objective = Objective.build(ObjectiveConfig(lambda_l1=args.lambda_l1), model.cfg, amp=amp).to(device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    env = DistEnv(0, 1, 0, device)
    batch = {"street": torch.randn(args.batch_size, 3, args.pano_h, args.pano_w, device=device),
             "satellite": torch.randn(args.batch_size, 3, args.sate, args.sate, device=device)}
    batch = {k: v.contiguous(memory_format=memory_format) for k, v in batch.items()}

    def step():
        return train_step(objective, model, batch, optimizer, scaler, env, hard_ratio=1.0,
                          chunk_size=args.chunk_size).loss.total

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    for _ in range(args.steps):
        loss = step().detach()
    sync()
    elapsed = time.perf_counter() - started
    result = {"samples_per_s": round(args.batch_size * args.steps / elapsed, 1),
              "ms_per_step": round(1000 * elapsed / args.steps, 2), "loss": round(loss.item(), 4)}
    if device.type == "cuda":
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    result["parameters"] = count_parameters(model)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--backbone", default="vgg16")
    parser.add_argument("--transform", default="tps")
    parser.add_argument("--lambda_l1", type=float, default=1.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--sate", type=int, default=256)
    parser.add_argument("--pano_h", type=int, default=112)
    parser.add_argument("--pano_w", type=int, default=616)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--chunk_size", type=int, default=0, help="gradient caching chunk (0 = off)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    variants = {"fp32": ("none", False), "fp32_channels_last": ("none", True)}
    if device.type == "cuda":
        variants.update({"bf16_channels_last": ("bf16", True), "fp16_channels_last": ("fp16", True)})
    results = {name: run_variant(args, device, amp, cl) for name, (amp, cl) in variants.items()}
    base = results["fp32"]["samples_per_s"]
    for result in results.values():
        result["speedup_vs_fp32"] = round(result["samples_per_s"] / base, 2)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(json.dumps({"benchmark": "train_step", "device": name, "torch": torch.__version__,
                      "model": f"{args.backbone}+{args.transform}", "batch_size": args.batch_size,
                      "chunk_size": args.chunk_size,
                      "sate_size": args.sate, "pano_size": [args.pano_h, args.pano_w], "results": results}))


if __name__ == "__main__":
    main()
