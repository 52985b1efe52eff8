"""Benchmark (issue 7): CVUSA data loading at real sizes, the seed's way vs ours.

Writes ``--samples`` pairs of smooth-noise JPEGs with CVUSA's sizes (750 x 750 aerial,
1232 x 224 panorama) and a split CSV into a temp folder, then loads every pair at model
sizes (satellite 256 x 256, panorama 112 x 616), batched by ``--batch_size``:

* seed: PIL full decode + bicubic resize + torchvision ToTensor/Normalize, in the main
  process (DataLoader without workers);
* ours, as training runs it: :class:`data.cvusa.CVUSA` (reduced-resolution DCT decoding,
  area resize) in ``--workers`` DataLoader worker processes, sending uint8 batches that
  :func:`data.io.normalise` turns into the same normalised tensors (counted here in the
  main process; in training that step runs on the GPU).

Both produce the same tensors (shapes and normalisation). "Per core" is samples per CPU
second of the main process plus the worker processes (read from /proc: Linux only);
wall-clock throughput is reported too. Each loader makes two passes: "cold" includes
starting the (persistent) workers, "warm" is the steady state of a long epoch; the
headline speedups use "warm". To separate decoding from the DataLoader's shared-memory
transport of batches, ours is also measured with float32 batches normalised in the
workers, and each way under the other's process model (ours in the main process, the
seed's in workers). torch runs single-threaded in all.
Prints ONE JSON line.
Usage: ``python benchmarks/bench_loader.py [--samples 256 --workers 2]``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms  # noqa: E402

from data.cvusa import CVUSA, read_split_csv  # noqa: E402
from data.tensors import IMAGENET_MEAN, IMAGENET_STD, normalise  # noqa: E402
from benchmarks.fake_images import smooth_noise_image  # noqa: E402

SATE_SIZE = (256, 256)
PANO_SIZE = (112, 616)


def make_dataset(root: str, count: int, quality: int) -> str:
    """CVUSA layout with ``count`` pairs; returns the CSV path."""
    for folder in ("bingmap/19", "streetview/panos", "splits"):
        os.makedirs(os.path.join(root, folder))
    rng = np.random.default_rng(0)
    lines = []
    for i in range(count):
        name = f"{i + 1:07d}"
        cv2.imwrite(os.path.join(root, "bingmap/19", name + ".jpg"), smooth_noise_image(rng, 750, 750),
                    [cv2.IMWRITE_JPEG_QUALITY, quality])
        cv2.imwrite(os.path.join(root, "streetview/panos", name + ".jpg"), smooth_noise_image(rng, 224, 1232),
                    [cv2.IMWRITE_JPEG_QUALITY, quality])
        lines.append(f"bingmap/19/{name}.jpg,streetview/panos/{name}.jpg,streetview/annotations/{name}.png")
    csv = os.path.join(root, "splits", "bench.csv")
    with open(csv, "w") as handle:
        handle.write("\n".join(lines) + "\n")
    return csv


class SeedStyleCVUSA(Dataset):
    """The seed's loading: PIL full decode, bicubic resize, torchvision ToTensor + Normalize."""

    def __init__(self, root: str, csv: str) -> None:
        self.root = root
        self.pairs = read_split_csv(csv)
        normalize = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
        bicubic = transforms.InterpolationMode.BICUBIC
        self.sat_transform = transforms.Compose([transforms.Resize(SATE_SIZE, interpolation=bicubic),
                                                 transforms.ToTensor(), normalize])
        self.pano_transform = transforms.Compose([transforms.Resize(PANO_SIZE, interpolation=bicubic),
                                                  transforms.ToTensor(), normalize])

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        aerial, pano, _ = self.pairs[index]
        satellite = Image.open(os.path.join(self.root, aerial)).convert("RGB")
        street = Image.open(os.path.join(self.root, pano)).convert("RGB")
        return {"street": self.pano_transform(street), "satellite": self.sat_transform(satellite), "index": index}


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a live process (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _worker_pids(loader: DataLoader) -> list:
    iterator = getattr(loader, "_iterator", None)  # persistent workers live on the loader
    return [worker.pid for worker in getattr(iterator, "_workers", [])]


def timed_pass(loader: DataLoader, normalise_batches: bool = False) -> dict:
    """Iterate ``loader`` once: wall time and CPU time of this process plus its workers.

    The first pass of a loader with persistent workers includes starting them ("cold");
    later passes measure the steady state ("warm").
    """
    workers_before = {pid: _process_cpu_s(pid) for pid in _worker_pids(loader)}
    wall, cpu = time.perf_counter(), time.process_time()
    samples = 0
    for batch in loader:
        if normalise_batches:  # uint8 transport: normalise in the consumer (on the GPU in training)
            batch = {key: normalise(batch[key]) for key in ("street", "satellite")}
        assert batch["street"].dtype == torch.float32
        assert batch["street"].shape[1:] == (3, *PANO_SIZE) and batch["satellite"].shape[1:] == (3, *SATE_SIZE)
        samples += batch["street"].shape[0]
    wall = time.perf_counter() - wall
    cpu = time.process_time() - cpu
    cpu += sum(_process_cpu_s(pid) - workers_before.get(pid, 0.0) for pid in _worker_pids(loader))
    return {"samples_per_s": round(samples / wall, 2), "cpu_s": round(cpu, 3),
            "samples_per_cpu_s": round(samples / cpu, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=256, help="pairs to load")
    parser.add_argument("--batch_size", type=int, default=32, help="batch size")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of our loader")
    parser.add_argument("--quality", type=int, default=85, help="JPEG quality of the generated images")
    args = parser.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as root:
        csv = make_dataset(root, args.samples, args.quality)
        seed_set, ours_set = SeedStyleCVUSA(root, csv), CVUSA(root, csv, SATE_SIZE, PANO_SIZE)
        # Same pixels up to resampling differences: compare one sample.
        a, b = seed_set[0], ours_set[0]
        mean_abs_diff = {key: round(float((a[key] - b[key]).abs().mean()), 4) for key in ("street", "satellite")}

        def measure(dataset, workers: int, normalise_batches: bool = False) -> dict:
            loader = DataLoader(dataset, batch_size=args.batch_size, num_workers=workers,
                                persistent_workers=workers > 0)
            return {"workers": workers, "cold": timed_pass(loader, normalise_batches),
                    "warm": timed_pass(loader, normalise_batches)}

        seed = measure(seed_set, 0)
        ours = measure(CVUSA(root, csv, SATE_SIZE, PANO_SIZE, normalise=False), args.workers, normalise_batches=True)
        # Decomposition: float32 transport, and each way under the other's process model.
        ours_float = measure(ours_set, args.workers)
        ours_main = measure(ours_set, 0)
        seed_workers = measure(seed_set, args.workers)

    def ratio(x: dict, y: dict, key: str, run: str = "warm") -> float:
        return round(x[run][key] / y[run][key], 2)

    result = {
        "bench": "loader",
        "samples": args.samples,
        "batch_size": args.batch_size,
        "sizes": {"aerial_jpeg": [750, 750], "panorama_jpeg": [224, 1232],
                  "satellite": list(SATE_SIZE), "street": list(PANO_SIZE)},
        "seed": seed,
        "ours": ours,
        "speedup_per_core": ratio(ours, seed, "samples_per_cpu_s"),
        "speedup_wall": ratio(ours, seed, "samples_per_s"),
        "speedup_per_core_cold": ratio(ours, seed, "samples_per_cpu_s", "cold"),
        "ours_main_process": ours_main,
        "seed_in_workers": seed_workers,
        "speedup_per_core_both_main_process": ratio(ours_main, seed, "samples_per_cpu_s"),
        "speedup_per_core_both_in_workers": ratio(ours_float, seed_workers, "samples_per_cpu_s"),
        "ours_float32_transport": ours_float,
        "speedup_per_core_float32_transport": ratio(ours_float, seed, "samples_per_cpu_s"),
        "mean_abs_diff_normalised": mean_abs_diff,
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
