"""Training rate of several ways to run the same step, measured in one process, one after another (issue 9).

    python benchmarks/train_speed.py --images DIR --labels CSV [--variants native,conv,sum,native/nchw,sum/nchw]
        [--arch inception_v3] [--image-size 299] [--batch-size 128] [--limit 1024] [--steps 10] [--profile]
        [--json FILE]

A variant is `POOL[/nchw][/compile]`: how inception_v3's 3x3 average pools are computed (native, conv, sum; see
boneage.models.pooling), the memory layout (channels_last unless /nchw) and torch.compile. All variants train the same
network on the same store of decoded images with `boneage bench`'s measurement (training fed by the loader, and the
compute bound on one batch already on the device); the table gives each one's ratio to the first. The last line of
stdout is `best: VARIANT` (the highest training rate), for scripts. On a CPU every variant is slow and the ratios say
little about a GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace

from boneage.config import ModelConfig, Preprocess, TrainConfig
from boneage.training.bench import bench


def parse_variant(text: str, base: TrainConfig) -> TrainConfig:
    pool, *flags = text.split("/")
    unknown = set(flags) - {"nchw", "compile"}
    if unknown:
        raise SystemExit(f"variant {text!r}: unknown part(s) {', '.join(sorted(unknown))} (nchw, compile)")
    return replace(base, model=replace(base.model, pool_impl=pool), channels_last="nchw" not in flags,
                   compile="compile" in flags)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--variants", default="native,conv,sum,native/nchw,sum/nchw")
    p.add_argument("--arch", default="inception_v3")
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--limit", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--device")
    p.add_argument("--cache-dir")
    p.add_argument("--profile", action="store_true",
                   help="also profile each variant (3 more steps) and list the fastest one's top kernels")
    p.add_argument("--json", help="write every variant's bench result here")
    args = p.parse_args(argv)

    base = TrainConfig(images=args.images, labels=args.labels, limit=args.limit or None, batch_size=args.batch_size,
                       preprocess=Preprocess(image_size=args.image_size), model=ModelConfig(arch=args.arch),
                       cache_dir=args.cache_dir)
    variants = {text: parse_variant(text, base) for text in args.variants.split(",")}  # a typo stops before any run
    results: dict[str, dict] = {}
    for text, cfg in variants.items():
        try:
            results[text] = bench(cfg, args.device, steps=args.steps, profile=args.profile,
                                  log=lambda m: print(m, file=sys.stderr))
        except Exception as exc:  # one variant failing (a compiler error) must not cost the others' figures
            results[text] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        r = results[text]
        print(f"{text}: {r.get('train_images_per_s', r.get('error'))}", file=sys.stderr, flush=True)
    ok = {k: r for k, r in results.items() if "error" not in r}
    if not ok:
        print("every variant failed:", json.dumps(results))
        return 1
    first = next(iter(ok.values()))
    print(f"{first['device']}: {first['arch']} {first['image_size']} px, batch {first['batch_size']}, "
          f"{first['precision']}, {first['steps']} timed steps each")
    print(f"{'variant':16} {'train img/s':>11} {'ratio':>6} {'compute img/s':>13} {'ratio':>6} {'TFLOP/s':>8} "
          f"{'peak':>6}")
    for text, r in results.items():
        if "error" in r:
            print(f"{text:16} failed: {r['error'][:100]}")
            continue
        peak = f"{r['bf16_peak_share']:6.1%}" if r.get("bf16_peak_share") else f"{'-':>6}"
        print(f"{text:16} {r['train_images_per_s']:11.1f} {r['train_images_per_s'] / first['train_images_per_s']:6.2f} "
              f"{r['compute_images_per_s']:13.1f} {r['compute_images_per_s'] / first['compute_images_per_s']:6.2f} "
              f"{r['achieved_tflops']:8.2f} {peak}")
    best = max(ok, key=lambda k: ok[k]["train_images_per_s"])
    if args.profile:
        for k in results[best].get("profile_top_kernels", [])[:8]:
            name = k.get("name", k.get("error", ""))[:90]
            print(f"  {best}: {k.get('share', 0):6.1%} {k.get('calls', '')!s:>5} {name}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(f"best: {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
