"""`boneage bench`: loader rate, training rate fed by the real loader, and the compute bound, in one run; on a CPU,
in bf16 (where `boneage train` uses it) and float32 side by side.

train / compute says what the loader costs; loader alone says how far it is from limiting anything. Training and
compute steps are measured alternately, so drift in the machine's speed falls on both equally.
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from boneage.config import TrainConfig, to_dict
from boneage.training.datamodule import BoneAgeData
from boneage.training.module import BoneAgeModule, prepare_batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench(cfg: TrainConfig, device: str | None = None, steps: int = 5, warmup: int = 2, profile: bool = False,
          log=print, fp32: bool | None = None) -> dict:
    """Rates in images/s of the training loop (`train`: batches from the loader, augmented, one optimiser step) and of
    the step alone on one batch (`compute`), in the precision `boneage train` picks here (bf16 on GPUs and on CPUs
    with bf16 units). `fp32` (default: on CPUs) measures both in float32 too, alternately in the same run, so
    `speedup_over_fp32` compares the two on the same machine at the same moment."""
    from boneage.training.train import resolve_precision

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = resolve_precision(replace(cfg, accelerator=dev.type))
    fp32 = dev.type == "cpu" if fp32 is None else fp32
    torch.manual_seed(cfg.seed)
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest convolutions, as train does
    data = BoneAgeData(cfg, log=log)
    data.load_split(save=False)
    if dev.type == "cuda" and cfg.device_cache != "off":
        data.train_set = data.train_set.to(dev)
    loader = data.train_dataloader()

    def batches():
        while True:
            yield from loader

    stream = batches()
    # 1. the loader alone: batches cut from the store and delivered on the device
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0 or n < 5 * cfg.batch_size:
        images, male, age = next(stream)
        images = images.to(dev, non_blocking=True)
        n += len(images)
    _sync(dev)
    loader_rate = n / (time.perf_counter() - start)

    # 2 and 3. training steps: fed by the loader, and on one batch already on the device, per precision
    module = BoneAgeModule(to_dict(cfg)).to(dev).train()
    opt = torch.optim.Adam(module.parameters(), lr=cfg.effective_lr, fused=dev.type == "cuda")

    def step(images, male, age, bf16: bool) -> None:
        x = prepare_batch(images.to(dev, non_blocking=True), cfg, train=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.l1_loss(module(x, male.to(dev)).float(), age.to(dev).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fixed = tuple(t.to(dev) for t in next(stream))
    kinds = {precision: precision.startswith("bf16")} | ({"32-true": False} if fp32 else {})
    for bf16 in kinds.values():
        for _ in range(warmup):
            step(*next(stream), bf16)
            step(*fixed, bf16)
    _sync(dev)
    t_train, t_compute = dict.fromkeys(kinds, 0.0), dict.fromkeys(kinds, 0.0)
    for _ in range(steps):  # alternately, so drift in the machine's speed falls on every kind alike
        for kind, bf16 in kinds.items():
            t0 = time.perf_counter()
            step(*next(stream), bf16)
            _sync(dev)
            t1 = time.perf_counter()
            step(*fixed, bf16)
            _sync(dev)
            t_train[kind] += t1 - t0
            t_compute[kind] += time.perf_counter() - t1
    imgs = steps * cfg.batch_size
    flops = train_flops_per_image(module, cfg, dev)
    peak = bf16_peak_flops(dev)
    tflops = flops * imgs / t_compute[precision] / 1e12
    top = None
    if profile:
        try:
            top = profile_step(lambda *b: step(*b, kinds[precision]), fixed, dev)
        except Exception as exc:  # the profiler's API moves between releases; the rates above still stand
            top = [{"error": f"{type(exc).__name__}: {exc}"[:200]}]
    result = {
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)",
        "arch": cfg.model.arch, "pool_impl": cfg.model.pool_impl, "image_size": cfg.preprocess.image_size,
        "batch_size": cfg.batch_size, "precision": precision, "compile": cfg.compile,
        "loader_images_per_s": round(loader_rate, 1),
        "train_images_per_s": round(imgs / t_train[precision], 2),
        "compute_images_per_s": round(imgs / t_compute[precision], 2),
        "train_over_compute": round(t_compute[precision] / t_train[precision], 3),
        "steps": steps,
        "gflop_per_train_image": round(flops / 1e9, 2),
        "achieved_tflops": round(tflops, 2),
        "bf16_peak_share": round(tflops * 1e12 / peak, 4) if peak else None,
    }
    if fp32 and precision != "32-true":
        result["fp32"] = {"train_images_per_s": round(imgs / t_train["32-true"], 2),
                          "compute_images_per_s": round(imgs / t_compute["32-true"], 2)}
        result["speedup_over_fp32"] = {"train": round(t_train["32-true"] / t_train[precision], 2),
                                       "compute": round(t_compute["32-true"] / t_compute[precision], 2)}
    return result | ({"profile_top_kernels": top} if top is not None else {})


# Dense bf16 tensor-core peaks from the vendors' datasheets (FLOP/s), by a name fragment of the device.
BF16_PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "L4": 121e12}


def bf16_peak_flops(dev: torch.device) -> float | None:
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in BF16_PEAKS.items() if k in name), None)


def train_flops_per_image(module: torch.nn.Module, cfg: TrainConfig, dev: torch.device) -> float:
    """Forward + backward FLOPs of one training image, counted by PyTorch's FlopCounterMode on a batch of two."""
    from torch.utils.flop_counter import FlopCounterMode

    size = cfg.preprocess.image_size
    x = torch.zeros(2, cfg.preprocess.channels, size, size, device=dev)
    male = torch.zeros(2, device=dev)
    counter = FlopCounterMode(display=False)
    with counter:
        module(x, male).sum().backward()
    module.zero_grad(set_to_none=True)
    return counter.get_total_flops() / 2


def profile_step(step, batch, dev: torch.device, steps: int = 3, top: int = 15) -> list[dict]:
    """The kernels that take the device's time over a few training steps: name, share of device time, calls."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step(*batch)
        _sync(dev)
    events = [e for e in prof.key_averages() if e.device_type.name == ("CUDA" if dev.type == "cuda" else "CPU")]
    key = "self_device_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    total = sum(getattr(e, key) for e in events) or 1.0
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    return [{"name": e.key[:100], "share": round(getattr(e, key) / total, 4), "calls": e.count,
             "ms_per_step": round(getattr(e, key) / 1e3 / steps, 3)} for e in events[:top]]
