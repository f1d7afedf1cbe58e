"""The `boneage` command. Each subcommand imports only what it needs: `predict` never loads Lightning."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boneage.errors import UserError


def years_months(months: float) -> str:
    total = int(round(months))
    return f"{total // 12} y {total % 12} m"


def parse_sexes(value: str, n: int) -> list[bool]:
    """`M` for every image, or `M,F,M` one per image."""
    from boneage.data.labels import parse_sex

    parts = [p for p in value.split(",") if p.strip()]
    sexes = [parse_sex(p) for p in parts]
    if not parts or any(s is None for s in sexes):
        raise UserError(f"--sex: expected M or F (or a comma list, one per image), got {value!r}")
    if len(sexes) == 1:
        return sexes * n
    if len(sexes) != n:
        raise UserError(f"--sex: {len(sexes)} values for {n} images")
    return sexes


# ---------------------------------------------------------------------------------------------------------- train
def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a model (the poster's recipe by default)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--images", help="folder of radiographs named by id")
    g.add_argument("--labels", help="label CSV (training, validation or test layout)")
    g.add_argument("--out", help="run folder (config, split, metrics, checkpoints)", default=None)
    g.add_argument("--limit", type=int, help="train on the first N rows after a seeded shuffle")
    g.add_argument("--seed", type=int)
    g.add_argument("--cache-dir", help="where decoded image stores live (default ~/.cache/boneage)")
    g.add_argument("--image-size", type=int, help="input side in pixels (299)")
    g.add_argument("--intensity", choices=["equalize", "percentile", "none"])
    g = p.add_argument_group("model")
    g.add_argument("--arch", help="trunk: inception_v3, resnet101, ... (see `boneage models`)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--config", help="JSON file of overrides (see recipes/)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="learning rate at batch 16")
    g.add_argument("--lr-scaling", choices=["none", "sqrt", "linear"])
    g.add_argument("--schedule", choices=["plateau", "cosine"])
    g.add_argument("--warmup-epochs", type=int)
    g = p.add_argument_group("hardware")
    g.add_argument("--accelerator", help="auto, cpu, gpu")
    g.add_argument("--devices", help="number of devices, or auto")
    g.add_argument("--num-nodes", type=int)
    g.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed (default: bf16-mixed on GPUs)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    g.add_argument("--workers", type=int, dest="num_workers", help="loader processes when the data stays on CPU")
    g.add_argument("--max-minutes", type=float, help="stop and save after this much wall time")
    g.add_argument("--checkpoint-every", type=int, help="epochs between last.ckpt saves")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.ckpt")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from boneage.config import TrainConfig, merge, read_json, to_dict, train_config_from_dict
    from boneage.training.train import config_for_resume, run

    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN_DIR")
        cfg = config_for_resume(args.out, args.epochs)
    else:
        settings = to_dict(TrainConfig())
        if args.config:
            settings = merge(settings, read_json(args.config))
        flat = {k: v for k, v in vars(args).items() if v is not None and k in settings}
        settings = merge(settings, flat)
        if args.arch:
            settings["model"]["arch"] = args.arch
        for key in ("image_size", "intensity"):
            if getattr(args, key) is not None:
                settings["preprocess"][key] = getattr(args, key)
        cfg = train_config_from_dict(settings, args.config or "arguments")
        if not cfg.images or not cfg.labels:
            raise UserError("train needs --images DIR and --labels CSV")
        if not args.out:
            cfg.out = str(Path("runs") / cfg.model.arch)
        from boneage.models import MIN_SIZE, get_trunk

        get_trunk(cfg.model.arch)
        if cfg.preprocess.image_size < MIN_SIZE[cfg.model.arch]:
            raise UserError(f"--image-size {cfg.preprocess.image_size}: {cfg.model.arch} needs at least "
                            f"{MIN_SIZE[cfg.model.arch]} pixels")
    run(cfg, resume=args.resume, log=lambda m: print(m, file=sys.stderr))
    return 0


# ------------------------------------------------------------------------------------------------------- evaluate
def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model on a labelled folder")
    p.add_argument("--model", help="checkpoint or weights file (default: the shipped model)")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--out", help="folder for predictions.csv, metrics.json and figures")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from boneage.evaluation.evaluate import evaluate
    from boneage.evaluation.metrics import format_report
    from boneage.inference.predictor import Predictor, default_model_path

    model = Path(args.model) if args.model else default_model_path()
    predictor = Predictor.load(model)
    result = evaluate(predictor, args.images, args.labels, args.out, args.batch_size, args.workers,
                      log=lambda m: print(m, file=sys.stderr))
    if args.out and (model.parent / "metrics.csv").is_file():
        from boneage.evaluation.figures import plot_curves

        result.setdefault("files", {})["curves"] = str(plot_curves(model.parent / "metrics.csv",
                                                                   Path(args.out) / "curves.png"))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_report(result))
        for name, path in result.get("files", {}).items():
            print(f"  {name}: {path}")
    return 0


# -------------------------------------------------------------------------------------------------------- predict
def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="bone age of one or more radiographs")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--sex", required=True, help="M or F for all images, or a comma list, one per image")
    p.add_argument("--model", help="checkpoint or weights file (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="one JSON object per line, per image")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from boneage.inference.predictor import Predictor

    sexes = parse_sexes(args.sex, len(args.images))
    for path in args.images:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
    predictor = Predictor.load(args.model)
    for p in predictor.predict_files(args.images, sexes):
        if args.json:
            print(json.dumps({"image": p.image, "sex": p.sex, "bone_age_months": round(p.bone_age_months, 2),
                              "bone_age_years": round(p.bone_age_months / 12, 2)}))
        else:
            print(f"{p.image}: {p.bone_age_months:.1f} months ({years_months(p.bone_age_months)}), sex {p.sex}")
    return 0


# ---------------------------------------------------------------------------------------------------- bench, pack
def add_bench(sub) -> None:
    p = sub.add_parser("bench", help="loader, training and compute throughput in images/s (one JSON object)")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--arch", default="inception_v3")
    p.add_argument("--image-size", type=int, default=299)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when present)")
    p.add_argument("--limit", type=int, default=1024, help="images decoded into the store (0: all)")
    p.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from boneage.config import ModelConfig, Preprocess, TrainConfig
    from boneage.training.bench import bench

    cfg = TrainConfig(images=args.images, labels=args.labels, limit=args.limit or None, batch_size=args.batch_size,
                      preprocess=Preprocess(image_size=args.image_size), model=ModelConfig(arch=args.arch),
                      compile=args.compile, cache_dir=args.cache_dir)
    print(json.dumps(bench(cfg, args.device, steps=args.steps, log=lambda m: print(m, file=sys.stderr))))
    return 0


def add_pack(sub) -> None:
    p = sub.add_parser("pack", help="a compact zip of an RSNA-style dataset (WebP images + labels.csv)")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--out", required=True, help="the .zip to write")
    p.add_argument("--size", type=int, default=299)
    p.add_argument("--quality", type=int, default=65, help="WebP quality, 1-100")
    p.set_defaults(func=cmd_pack)


def cmd_pack(args) -> int:
    from boneage.data.pack import build_pack

    print(json.dumps(build_pack(args.images, args.labels, args.out, args.size, args.quality,
                                log=lambda m: print(m, file=sys.stderr))))
    return 0


# --------------------------------------------------------------------------------------------------------- export
def add_export(sub) -> None:
    p = sub.add_parser("export", help="a checkpoint as compact weights (.pt: int8/float16) or ONNX (.onnx)")
    p.add_argument("--model", help="checkpoint or weights file (default: the shipped model)")
    p.add_argument("--out", required=True, help="FILE.pt or FILE.onnx")
    p.add_argument("--storage", choices=["int8", "float16", "float32"], default="int8", help="for .pt")
    p.add_argument("--card", help="JSON model card to embed (for .pt)")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from boneage.inference.predictor import default_model_path

    model = args.model or default_model_path()
    if args.out.endswith(".onnx"):
        from boneage.inference.onnx import export_onnx

        result = export_onnx(model, args.out)
    else:
        from boneage.config import read_json
        from boneage.inference.weights import export_weights

        result = export_weights(model, args.out, args.storage, read_json(args.card) if args.card else None)
    print(json.dumps(result))
    return 0


# ---------------------------------------------------------------------------------------------------------- other
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered architectures")
    p.set_defaults(func=lambda args: print("\n".join(__import__("boneage.models", fromlist=["x"]).list_trunks())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boneage", description=__doc__)
    parser.add_argument("--version", action="version", version=f"boneage {__import__('boneage').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_evaluate, add_predict, add_bench, add_pack, add_export, add_models):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as exc:
        print(f"boneage: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("boneage: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
