"""What each part of a recipe's training augmentation costs a trained network, and whether it fits its training films.

A network is read (bf16 autocast where the CPU has bf16 units, one view, eval mode) on the first N validation films of
the recipe's split: clean, then under each part of the augmentation alone (flips, film noise, the in-batch affine and
each of its parts, intensity, low resolution, blur and noise), then under the whole recipe. Each line prints the MAD
and its paired difference from clean, film by film, with its standard error: a part that costs the network a month
makes training harder than the task it is scored on. Then N training films, as is and in each framed version: a
network that reads its training films as well as its validation films is not fitting them (more learning, not more
regularisation, is what it lacks).

    python benchmarks/augmentation_cost.py --data ../shared/data/rsna-bone-age [--recipe recipes/warm-restart-cpu.json]
        [--model src/boneage/weights/boneage-reference.pt] [--n 600]

Decodes the recipe's stores once when they are not cached (a few minutes); the readings take 2-3 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile

import torch

from boneage.config import train_config_from_dict
from boneage.inference.checkpoint import load_network
from boneage.training.datamodule import BoneAgeData, TensorBatches
from boneage.training.module import prepare_batch
from boneage.training.train import cpu_has_bf16_units

BF16 = cpu_has_bf16_units()  # read once: it parses /proc/cpuinfo
NONE = dict(hflip=False, vflip=False, rotate_deg=0.0, scale=0.0, translate=0.0, contrast=0.0, brightness=0.0,
            gamma=0.0, low_res=0.0, blur=0.0, noise=0.0, film_noise=0.0, film_narrow=0.0)


def parts(cfg) -> list[tuple[str, dict]]:
    """(name, the config's augmentation fields) for clean, each part alone, and the whole recipe."""
    def only(**kw):
        return {**NONE, **kw}

    return [
        ("clean", NONE),
        ("flips", only(hflip=cfg.hflip, vflip=cfg.vflip)),
        ("film noise", only(film_noise=cfg.film_noise, film_narrow=cfg.film_narrow)),
        ("affine (rotation, zoom, shift)", only(rotate_deg=cfg.rotate_deg, scale=cfg.scale, translate=cfg.translate)),
        ("  rotation alone", only(rotate_deg=cfg.rotate_deg)),
        ("  zoom alone", only(scale=cfg.scale)),
        ("  shift alone", only(translate=cfg.translate)),
        ("intensity (contrast, brightness, gamma)", only(contrast=cfg.contrast, brightness=cfg.brightness,
                                                         gamma=cfg.gamma)),
        ("low resolution", only(low_res=cfg.low_res)),
        ("blur and noise", only(blur=cfg.blur, noise=cfg.noise)),
        ("the whole recipe", {}),
    ]


def errors(model, films: TensorBatches, cfg, over: dict | None, seed: int = 0, batch: int = 50) -> torch.Tensor:
    """|answer - label| per film, months; `over` None reads the films as inference does (no augmentation)."""
    c = dataclasses.replace(cfg, **over) if over else cfg
    out = []
    for start in range(0, len(films.age), batch):
        i = torch.arange(start, min(start + batch, len(films.age)))
        torch.manual_seed(seed + start)  # every part draws the same films in the same order
        x = prepare_batch(films.images[i].unsqueeze(1), c, train=over is not None)
        with torch.no_grad(), torch.autocast("cpu", torch.bfloat16, enabled=BF16):
            out.append((model(x.contiguous(memory_format=torch.channels_last), films.male[i]).float()
                        - films.age[i].float()).abs())
    return torch.cat(out)


def line(name: str, e: torch.Tensor, clean: torch.Tensor | None, ref: str = "clean") -> str:
    if clean is None:
        return f"{name:42s} MAD {e.mean():5.2f}"
    d = e - clean
    return f"{name:42s} MAD {e.mean():5.2f}  vs {ref} {d.mean():+5.2f} +- {d.std() / len(d) ** 0.5:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="folder with boneage-training-dataset/ and its CSV")
    ap.add_argument("--recipe", default="recipes/warm-restart-cpu.json")
    ap.add_argument("--model", default="src/boneage/weights/boneage-reference.pt")
    ap.add_argument("--n", type=int, default=600, help="validation films, and training films, read")
    args = ap.parse_args()

    recipe = {k: v for k, v in json.load(open(args.recipe)).items() if not k.startswith("_")}
    with tempfile.TemporaryDirectory() as out:
        films = f"{args.data}/boneage-training-dataset"
        recipe.update(images=films, labels=f"{films}.csv", out=out)
        cfg = train_config_from_dict(recipe, args.recipe)
        data = BoneAgeData(cfg)
        data.load_split(save=False)
    model, _, _ = load_network(args.model)
    model = model.eval().to(memory_format=torch.channels_last)

    val = data.val_set
    n = min(args.n, len(val.age))
    val = TensorBatches(val.images[:n], val.male[:n], val.age[:n])
    print(f"{args.model} on the first {n} validation films of {args.recipe}'s split "
          f"(one view, {'bf16' if BF16 else 'float32'}):")
    clean = errors(model, val, cfg, None)
    print(line("as inference reads them", clean, None))
    for name, over in parts(cfg)[1:]:
        print(line(name, errors(model, val, cfg, over), clean), flush=True)

    train = data.train_set
    pick = torch.randperm(len(train.age), generator=torch.Generator().manual_seed(1))[: args.n]
    versions = train.images if train.images.ndim == 4 else train.images[None]
    print(f"{len(pick)} training films drawn at random, read as inference reads them:")
    as_is = None
    for v in range(versions.shape[0]):
        films = TensorBatches(versions[v, pick], train.male[pick], train.age[pick])
        e = errors(model, films, cfg, None)
        print(line("as is" if v == 0 else f"framed, version {v}", e, as_is, "as is"))
        as_is = e if v == 0 else as_is


if __name__ == "__main__":
    main()
