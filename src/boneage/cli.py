"""The `boneage` command. Each subcommand imports only what it needs: `predict` never loads Lightning."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from boneage.assessment import Case
from boneage.config import POOL_IMPLS
from boneage.errors import UserError, printable, shown


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {shown(text)}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


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
    g.add_argument("--crop", choices=["none", "hand", "hand-in-plate"],
                   help="cut each film to the hand before resizing")
    g.add_argument("--val-ids", help="label CSV whose ids are the validation set (e.g. docs/reference-model/val.csv)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", help="trunk: inception_v3, resnet101, ... (see `boneage models`)")
    g.add_argument("--init-from", help="checkpoint or weights file to start from (a warm restart), e.g. the shipped "
                                       "model")
    g = p.add_argument_group("optimisation")
    g.add_argument("--config", help="JSON file of overrides (see recipes/)")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="learning rate at batch 16")
    g.add_argument("--lr-scaling", choices=["none", "sqrt", "linear"])
    g.add_argument("--schedule", choices=["plateau", "cosine"])
    g.add_argument("--warmup-epochs", type=float)
    g.add_argument("--ema-decay", type=float, help="validate and keep an exponential moving average of the weights "
                                                   "with this decay per step, e.g. 0.999 (default: off)")
    g.add_argument("--consistency", type=float, help="train each film as two views in its batch and add this weight x "
                                                     "the |difference| of their answers to the loss, e.g. 1 (default: "
                                                     "off)")
    g = p.add_argument_group("hardware")
    g.add_argument("--accelerator", help="auto, cpu, gpu")
    g.add_argument("--devices", help="number of devices, or auto")
    g.add_argument("--num-nodes", type=int)
    g.add_argument("--precision", help="32-true, bf16-mixed, 16-mixed (default: bf16-mixed on GPUs and on CPUs with "
                                              "bf16 units (AMX, AVX-512 BF16), 32-true elsewhere)")
    g.add_argument("--compile", action="store_true", default=None, help="torch.compile the network")
    g.add_argument("--pool-impl", choices=POOL_IMPLS,
                   help="how inception_v3 computes its 3x3 average pools: the same function, a speed setting")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels-last memory layout (default: on)")
    g.add_argument("--workers", type=int, dest="num_workers", help="loader processes when the data stays on CPU")
    g.add_argument("--max-minutes", type=float, help="stop and save after this much wall time")
    g.add_argument("--checkpoint-every", type=int, help="epochs between last.ckpt saves")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last.ckpt")
    p.set_defaults(func=cmd_train)


def cmd_train(args) -> int:
    from boneage.config import read_json, train_config
    from boneage.training.train import config_for_resume, run

    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out RUN_DIR")
        cfg = config_for_resume(args.out, args.epochs)
    else:
        flags = {k: v for k, v in vars(args).items()
                 if v is not None and k not in ("command", "func", "config", "resume")}
        cfg = train_config(read_json(args.config) if args.config else None, flags, args.config or "arguments")
    run(cfg, resume=args.resume, log=lambda m: print(m, file=sys.stderr))
    return 0


# ------------------------------------------------------------------------------------------------------- evaluate
def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="score a model (or an ensemble) on a labelled folder")
    add_model_options(p)
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True)
    p.add_argument("--out", help="folder for predictions.csv, metrics.json and figures")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1...")
    p.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args) -> int:
    from boneage.evaluation.evaluate import evaluate
    from boneage.evaluation.metrics import format_summary
    from boneage.inference.checkpoint import default_model_path
    from boneage.inference.loading import load_predictor

    predictor = load_predictor(args.model, tta=args.tta, device=args.device)
    result = evaluate(predictor, args.images, args.labels, args.out, args.batch_size, args.workers,
                      log=lambda m: print(m, file=sys.stderr))
    model = Path(args.model[0]) if args.model else default_model_path()
    if args.out and (model.parent / "metrics.csv").is_file():
        from boneage.evaluation.figures import plot_curves

        result.setdefault("files", {})["curves"] = str(plot_curves(model.parent / "metrics.csv",
                                                                   Path(args.out) / "curves.png"))
    if args.json:
        print(json.dumps(result))
    else:
        print(format_summary(result))
        for name, path in result.get("files", {}).items():
            print(f"  {name}: {path}")
    return 0


# ------------------------------------------------------------------------------------------------------ precision
def add_precision(sub) -> None:
    p = sub.add_parser("precision", help="how far each answer moves when a film is re-saved, mirrored, rotated...")
    add_model_options(p)
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True, help="the films to use, e.g. docs/reference-model/val.csv")
    p.add_argument("--limit", type=int, help="the first N films of --labels")
    p.add_argument("--family", action="append", metavar="FAMILY",
                   help="measure only this family of changes, e.g. 'sensor noise' (repeatable; default: all)")
    p.add_argument("--out", help="folder for precision.json, precision.md and deltas.csv")
    p.add_argument("--json", action="store_true", help="print one JSON object (without the per-film deltas)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, help="preprocessing processes (default: the cores, at most 16)")
    p.set_defaults(func=cmd_precision)


def cmd_precision(args) -> int:
    from boneage.evaluation.precision import format_table, measure, select, write_outputs
    from boneage.inference.loading import load_predictor

    select(args.family)  # an unknown family fails before the model loads
    predictor = load_predictor(args.model, tta=args.tta, device=args.device)
    result = measure(predictor, args.images, args.labels, args.limit, args.workers,
                     log=lambda m: print(m, file=sys.stderr), families=args.family)
    if args.out:
        write_outputs(result, Path(args.out))
    summary = {k: v for k, v in result.items() if k != "per_film"}
    if args.json:
        print(json.dumps(summary))
    else:
        print(f"{result['n']} films, MAD of the originals {result['mad_original']:.2f} months, test-time views: "
              f"{args.tta}\n{format_table(result)}\nworst SD single {result['worst_sd_single']:.2f} months, "
              f"largest |Δ| {result['largest_abs']:.1f} months")
    return 0


# --------------------------------------------------------------------------------------------------------- debias
def add_debias(sub) -> None:
    p = sub.add_parser("debias", help="fit the model's bias correction by age on held-out labelled films, and write "
                                      "the model with it")
    p.add_argument("--model", help="weights file or checkpoint (default: the shipped model)")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True, help="held-out films, e.g. docs/reference-model/val.csv (never "
                                                   "trained on)")
    p.add_argument("--out", required=True, help="the model file to write, with the correction (.pt)")
    p.add_argument("--report", metavar="DIR", help="folder for bias.json, bias.md (the table by age band, before "
                                                   "and after) and answers.csv")
    p.add_argument("--folds", type=int, default=5, help="folds of the cross-fitting that measures the correction")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_debias)


def cmd_debias(args) -> int:
    from boneage.evaluation.bias import band_table, debias

    if args.folds < 2:
        raise UserError("--folds must be at least 2")
    if not args.out.endswith(".pt"):
        raise UserError(f"--out {args.out}: the model is written as a .pt weights file")
    result = debias(args.model, args.images, args.labels, args.out, args.report, args.folds, args.batch_size,
                    args.workers, log=lambda m: print(m, file=sys.stderr))
    print(f"{result['films']} films; correction '{result['curve']}', cross-fitted over {result['folds']} folds "
          f"(months):\n{band_table(result['before'], result['after'])}\nwritten: {result['out']}")
    return 0


# -------------------------------------------------------------------------------------------------------- predict
# boneage.inference.tta.VIEWS, named here so that the CLI starts without importing torch
VIEWS = ("none", "flip", "flips", "framings")


def add_model_options(p) -> None:
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="checkpoint, weights or .onnx file (default: the shipped model); repeat for an ensemble")
    p.add_argument("--tta", default="flip", choices=VIEWS,
                   help="test-time views averaged: none, flip (the film and its left-right mirror), flips (all four "
                        "mirror images), framings (the film as is, rotated ±7° and with a 10%% wider margin, each "
                        "with its mirror: 4x the time of flip, steadier under rotation and framing)")


def add_predict(sub) -> None:
    p = sub.add_parser("predict", help="bone age of radiographs (PNG, JPEG, TIFF, DICOM...), or of folders of them")
    p.add_argument("images", nargs="+", metavar="IMAGE_OR_FOLDER")
    p.add_argument("--sex", help="M or F for all images, or a comma list, one per image; optional for DICOM files "
                                 "that record PatientSex")
    p.add_argument("--labels", help="label CSV (any of the three RSNA layouts) giving each image's sex by its id "
                                    "(the file name without extension)")
    add_model_options(p)
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto: ONNX Runtime when installed (a .pt/.ckpt model is converted once into "
                        "~/.cache/boneage/onnx), else PyTorch; PyTorch whenever --heatmap is asked for")
    g = p.add_argument_group("chronological age, for the bone-age SDS (Greulich & Pyle, Brush Foundation)")
    g.add_argument("--age", type=float, metavar="MONTHS", help="chronological age in months")
    g.add_argument("--dob", metavar="YYYY-MM-DD", help="date of birth")
    g.add_argument("--study-date", metavar="YYYY-MM-DD", help="date of the radiograph, with --dob "
                                                               "(default: the DICOM StudyDate)")
    p.add_argument("--no-checks", dest="check", action="store_false",
                   help="skip the quality checks that refuse images too small, constant, in colour, inverted or "
                        "probably not a hand radiograph (see boneage.quality); for generated or unusual images")
    p.add_argument("--json", action="store_true", help="one JSON object per line, per image")
    p.add_argument("--heatmap", metavar="DIR", help="also write a saliency overlay PNG per image into DIR")
    p.add_argument("--chart", metavar="FILE.png", help="draw the films on the Greulich & Pyle chart (needs the "
                                                        "chronological age; one child, one or several films)")
    p.add_argument("--dicom-out", metavar="DIR", help="also write each DICOM film's answer as a Structured Report and "
                                                       "a picture (Secondary Capture) into DIR, as `boneage node` "
                                                       "sends them; a refused film gets both too, saying why")
    g = p.add_argument_group("batch scoring (a folder, or --out): a CSV row per film, refusals included")
    g.add_argument("--out", metavar="FILE.csv", help="write rows here; run again to continue (done films are skipped)")
    g.add_argument("--workers", type=positive_int, default=2, help="threads decoding while the model runs")
    g.add_argument("--batch-size", type=positive_int, default=16)
    p.set_defaults(func=cmd_predict)


def cmd_predict(args) -> int:
    from boneage.assessment import assess, check_dates
    from boneage.inference.loading import load_predictor

    batch = args.out is not None or any(Path(p).is_dir() for p in args.images)
    # With --heatmap the map needs the PyTorch network anyway: load only that one, unless a runtime is asked for.
    runtime = "torch" if args.heatmap and args.runtime == "auto" else args.runtime
    if args.heatmap and Path(args.heatmap).exists() and not Path(args.heatmap).is_dir():
        raise UserError(f"--heatmap {args.heatmap}: exists and is not a folder")
    if batch and not args.out:
        raise UserError("a folder of films is scored into a CSV: give --out FILE.csv")
    if batch and (args.heatmap or args.chart):
        raise UserError("--heatmap and --chart are for single films, not batch scoring")
    from boneage.batch import cases_for, check_out, list_films

    if batch:
        check_out(Path(args.out))
    films = list_films(args.images)
    if not films:
        raise UserError(f"{', '.join(args.images)}: no image files")
    cases = cases_for(films, args.sex, args.labels, age_months=args.age, birth_date=args.dob,
                      study_date=args.study_date, check=args.check)
    check_dates(cases[0])  # a malformed date fails before the model loads
    if args.dicom_out:
        if batch or args.heatmap or args.chart:
            raise UserError("--dicom-out is for single DICOM films, without --out, --heatmap or --chart")
        return _dicom_out(cases, args, runtime)
    if not batch:  # single films: a refused one fails before the model is loaded (or converted)
        from boneage.assessment import read

        cases = [read(case) for case in cases]
    predictor = load_predictor(args.model, runtime, tta=args.tta, log=lambda m: print(f"boneage: {m}", file=sys.stderr))

    if batch:
        from boneage.batch import score

        progress = _progress(len(cases))
        counts = score(cases, predictor, Path(args.out), args.batch_size, args.workers, progress.update)
        progress.close()
        print(json.dumps(counts | {"out": args.out}))
        return 0

    used: set[str] = set()
    records = []
    for i, case in enumerate(cases):
        record, prepared = assess(case, predictor)
        for w in record.warnings:
            print(printable(f"boneage: warning: {record.image}: {w}"), file=sys.stderr)
        if args.heatmap:
            from boneage.explain import heatmap_for  # grad-cam only when asked for: plain predict stays lean

            stem = Path(record.image).stem
            stem = f"{stem}-{i + 1}" if stem in used else stem  # a/x.png and b/x.png must not overwrite each other
            used.add(stem)
            record.extras["heatmap"] = str(heatmap_for(predictor, record, prepared,
                                                       Path(args.heatmap) / f"{stem}_saliency.png"))
        records.append(record)
        print(json.dumps(record.to_dict()) if args.json else format_record(record))
    if args.chart:
        from boneage.chart import chart_of

        print(f"chart: {chart_of(records, args.chart)}", file=sys.stderr)
    return 0


def _dicom_out(cases: list[Case], args, runtime: str) -> int:
    """`predict --dicom-out`: each film's answer (or refusal) as the SR and picture `boneage node` sends."""
    from boneage.hospital.answer import answer_case, read_header, write_answer
    from boneage.hospital.results import Algorithm
    from boneage.inference.loading import load_predictor

    headers = [read_header(case.data, case.label) for case in cases]  # not DICOM: one line before the model loads
    predictor = load_predictor(args.model, runtime, tta=args.tta, log=lambda m: print(f"boneage: {m}", file=sys.stderr))
    algorithm = Algorithm.of(predictor)
    refused, used = 0, set()
    for i, (case, header) in enumerate(zip(cases, headers)):
        answer = answer_case(case, predictor, algorithm, header)
        stem = Path(case.label).stem
        stem = f"{stem}-{i + 1}" if stem in used else stem  # a/x.dcm and b/x.dcm must not overwrite each other
        used.add(stem)
        files = ", ".join(map(str, write_answer(answer, args.dicom_out, stem)))
        if not answer.analysed:
            refused += 1
            print(printable(f"boneage: error: {case.label}: {answer.reason} (not analysed: {files})"), file=sys.stderr)
            continue
        for w in answer.record.warnings:
            print(printable(f"boneage: warning: {case.label}: {w}"), file=sys.stderr)
        answer.record.extras["dicom_out"] = files.split(", ")
        print(json.dumps(answer.record.to_dict()) if args.json else printable(f"{format_record(answer.record)}; DICOM "
                                                                                 f"{files}"))
    return 2 if refused else 0


def _progress(total: int):
    """A progress bar on a terminal; silence in logs and pipes."""
    if sys.stderr.isatty():
        try:
            from tqdm import tqdm

            return tqdm(total=total, unit="film", file=sys.stderr)
        except ImportError:
            pass

    class Quiet:
        def update(self, n: int = 1) -> None:
            pass

        def close(self) -> None:
            pass

    return Quiet()


def format_record(record) -> str:
    """One line for a person: the bone age with its uncertainty, sex, and the comparison with the age, if known."""
    from boneage.sds import format_years_months

    line = (f"{record.image}: {record.bone_age_months:.1f} ± {record.uncertainty_months:.1f} months "
            f"({record.bone_age}), sex {record.sex}")
    sds = record.sds
    if sds is not None:
        age = record.chronological_age_months
        line += (f"; chronological age {age:.1f} months ({format_years_months(age)}), "
                 f"difference {sds.difference_months:+.1f} months")
        line += (f", SDS {sds.sds:+.2f} (simple {sds.sds_simple:+.2f})" if sds.sds is not None
                 else f"; no SDS: {sds.note}")
    if record.uncertain:
        line += "; UNCERTAIN: read with care"
    # the file name is anyone's text: shown with its control characters escaped, never as terminal codes
    return printable(line + (f"; heatmap {record.extras['heatmap']}" if record.extras.get("heatmap") else ""))


# -------------------------------------------------------------------------------------------------------- explain
def add_explain(sub) -> None:
    p = sub.add_parser("explain", help="activation maps and a saliency overlay for one radiograph (PNG figures)")
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--sex", help="M or F; optional for a DICOM file that records PatientSex")
    add_model_options(p)
    p.add_argument("--out", required=True, help="folder for the figures")
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="what assesses the film, as in predict (the maps are drawn on its PyTorch network)")
    p.add_argument("--no-checks", dest="check", action="store_false",
                   help="skip the quality checks (as predict --no-checks), for generated or unusual images")
    p.add_argument("--layers", help="comma list of layers for the activation figure (default: a spread, early to late)")
    p.add_argument("--method", default="gradcam", help="saliency method: gradcam, hirescam or layercam")
    p.add_argument("--saliency-layer", help="layer the saliency is computed on (default: the last convolutional block)")
    p.add_argument("--json", action="store_true", help="print the prediction and the file paths as one JSON object")
    p.set_defaults(func=cmd_explain)


def cmd_explain(args) -> int:
    from boneage.assessment import assess
    from boneage.explain import explain_file
    from boneage.inference.loading import load_predictor

    layers = [n.strip() for n in args.layers.split(",") if n.strip()] if args.layers is not None else None
    if layers == []:
        raise UserError("--layers: give at least one layer name")
    case = Case(data=Path(args.image), name=args.image, sex=args.sex, check=args.check)
    from boneage.assessment import read

    prepared = read(case)  # a refused film fails before the model loads
    predictor = load_predictor(args.model, args.runtime, tta=args.tta, log=lambda m: print(f"boneage: {m}",
                                                                                         file=sys.stderr))
    record, prepared = assess(prepared, predictor)
    result = explain_file(predictor, record, prepared, args.out, layers, args.method, args.saliency_layer)
    if args.json:
        print(json.dumps(result))
    else:
        print(format_record(record))
        for name, path in result["files"].items():
            print(printable(f"  {name}: {path}"))
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
    p.add_argument("--pool-impl", choices=POOL_IMPLS, default="native",
                   help="how inception_v3 computes its 3x3 average pools (the same function, a speed setting)")
    p.add_argument("--profile", action="store_true", help="also list the kernels that take the step's time")
    p.add_argument("--fp32", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure in float32, alternately, for the speed-up of bf16 (default: on CPUs)")
    p.add_argument("--config", help="a recipe (JSON of training settings) whose augmentation and preprocessing "
                                    "the loop runs, e.g. recipes/warm-restart-cpu.json")
    p.add_argument("--cache-dir")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from dataclasses import replace

    from boneage.config import TrainConfig, read_json, train_config_from_dict
    from boneage.training.bench import bench

    base = train_config_from_dict(read_json(args.config), args.config) if args.config else TrainConfig()
    cfg = replace(base, images=args.images, labels=args.labels, limit=args.limit or None, batch_size=args.batch_size,
                  preprocess=replace(base.preprocess, image_size=args.image_size),
                  model=replace(base.model, arch=args.arch, pool_impl=args.pool_impl), compile=args.compile,
                  cache_dir=args.cache_dir, init_from=None, val_ids=None)
    print(json.dumps(bench(cfg, args.device, steps=args.steps, profile=args.profile,
                           log=lambda m: print(m, file=sys.stderr), fp32=args.fp32)))
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
    p = sub.add_parser("export", help="a checkpoint as compact weights (.pt: int8/float16) or ONNX (.onnx); several "
                                      "models as one ensemble file (.pt)")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="checkpoint or weights file (default: the shipped model); repeat for an ensemble")
    p.add_argument("--out", required=True, help="FILE.pt or FILE.onnx")
    p.add_argument("--storage", choices=["int8", "float16", "float32"], default="int8", help="for .pt")
    p.add_argument("--card", help="JSON model card to embed (for .pt)")
    p.add_argument("--average", action="store_true",
                   help="with several runs of one network: one network of their averaged weights (a model soup), "
                        "instead of an ensemble")
    g = p.add_argument_group("int8 calibration: batch-norm statistics re-fitted to the rounded weights (recommended; "
                             "plain int8 moved answers by 1.6 months)")
    g.add_argument("--calibrate-images", metavar="DIR", help="folder of films")
    g.add_argument("--calibrate-labels", metavar="CSV", help="label CSV of training films (not validation ones), "
                                                             "e.g. a run's train.csv")
    g.add_argument("--calibrate-films", type=int, default=128, metavar="N", help="the first N films of the CSV")
    p.set_defaults(func=cmd_export)


def cmd_export(args) -> int:
    from boneage.config import read_json
    from boneage.inference.export import export

    calibration = None
    if args.calibrate_images or args.calibrate_labels:
        calibration = {"images": args.calibrate_images, "labels": args.calibrate_labels,
                       "films": args.calibrate_films}
    card = read_json(args.card) if args.card else None
    print(json.dumps(export(args.model, args.out, args.storage, args.average, card, calibration)))
    return 0


# ---------------------------------------------------------------------------------------------------------- serve
def add_serve(sub) -> None:
    p = sub.add_parser("serve", help="the web service and page (FastAPI): POST /predict, GET /health, "
                                     "/openapi.json")
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes it to the network")
    p.add_argument("--port", type=int, default=8000)
    add_model_options(p)
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto: ONNX Runtime when installed (converted once, cached), else PyTorch")
    p.add_argument("--max-upload-mb", type=float, default=64.0)
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="a name the service is reached by (Host header), besides localhost and the bound address; "
                        "repeatable")
    p.add_argument("--per-client", type=int, default=4, metavar="N",
                   help="requests in progress at once per client address (default %(default)s); more get a 429")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    import uvicorn

    from boneage.serving.guards import HeaderTimeoutH11, allowed_hosts, check_serve_options

    check_serve_options(args.port, args.max_upload_mb, args.per_client)
    hosts = allowed_hosts(args.host, args.allow_host)
    from boneage.serving.app import build

    app = build(args.model, args.runtime, args.max_upload_mb, tta=args.tta, allowed_hosts=hosts,
                per_client=args.per_client)
    print(f"boneage: serving on http://{args.host}:{args.port}/ (API schema at /openapi.json; answering to "
          f"{', '.join(hosts)})", file=sys.stderr)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=HeaderTimeoutH11,
                timeout_keep_alive=5, h11_max_incomplete_event_size=64 * 1024)
    return 0


# ----------------------------------------------------------------------------------------------------------- node
def add_node(sub) -> None:
    p = sub.add_parser("node", help="a DICOM node: a PACS sends it hand films (C-STORE), it sends each answer back "
                                    "into the study as a Structured Report and a picture")
    p.add_argument("--queue", required=True, metavar="DIR", help="the node's folder of films and answers (kept "
                                                                  "across restarts: nothing is lost or sent twice)")
    p.add_argument("--status", action="store_true", help="list what is waiting, pending, delivered and failed, "
                                                         "then exit")
    p.add_argument("--requeue-failed", action="store_true", help="give answers parked as failed new attempts, then "
                                                                 "exit")
    p.add_argument("--json", action="store_true", help="--status as one JSON object")
    g = p.add_argument_group("receiving (C-STORE SCP)")
    g.add_argument("--aet", default="BONEAGE", help="this node's AE title (default %(default)s)")
    g.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s); 0.0.0.0 for "
                                                       "every interface")
    g.add_argument("--port", type=int, default=11112, help="(default %(default)s)")
    g.add_argument("--allow", metavar="AET[,AET...]", help="calling AE titles that may send films (required)")
    g.add_argument("--allow-host", metavar="IP[,IP...]", help="hosts that may connect (default: any)")
    g.add_argument("--max-mb", type=float, default=256.0, help="largest data set accepted, MB (default %(default)g)")
    g = p.add_argument_group("sending the answers")
    g.add_argument("--send-to", metavar="AET@HOST:PORT|URL", help="C-STORE to a DICOM node, or STOW-RS to a "
                                                                  "DICOMweb root such as http://pacs/dicom-web")
    g.add_argument("--max-attempts", type=int, default=12,
                   help="deliveries tried before an answer is parked (default %(default)s)")
    g.add_argument("--retry-delay", type=float, default=5.0, metavar="SECONDS",
                   help="wait after the first failed delivery (default %(default)g); doubled after each, up to 10 "
                        "minutes")
    add_model_options(p)
    p.add_argument("--runtime", choices=["auto", "torch", "onnx"], default="auto",
                   help="auto: ONNX Runtime when installed (converted once, cached), else PyTorch")
    p.set_defaults(func=cmd_node)


def cmd_node(args) -> int:
    from boneage.hospital.node import Settings, parse_list, run
    from boneage.hospital.queue import format_status, open_queue

    if args.status or args.requeue_failed:
        queue = open_queue(args.queue)
        if args.requeue_failed:
            print(f"boneage: {queue.requeue_failed()} failed items queued again", file=sys.stderr)
        if args.status:
            status = queue.status()
            print(json.dumps(status) if args.json else format_status(status))
        return 0
    if not args.send_to:
        raise UserError("--send-to: where the answers go: AET@HOST:PORT (C-STORE) or a DICOMweb URL (STOW-RS)")
    settings = Settings(aet=args.aet, host=args.host, port=args.port, allow_aets=parse_list(args.allow),
                        allow_hosts=parse_list(args.allow_host), max_bytes=int(args.max_mb * (1 << 20)))
    run(settings, args.queue, args.send_to, args.model, args.tta, args.runtime, args.max_attempts, args.retry_delay)
    return 0


# ---------------------------------------------------------------------------------------------------------- other
def add_models(sub) -> None:
    p = sub.add_parser("models", help="list the registered architectures")
    p.set_defaults(func=lambda args: print("\n".join(__import__("boneage.models", fromlist=["x"]).list_trunks())))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="boneage", description=__doc__)
    parser.add_argument("--version", action="version", version=f"boneage {__import__('boneage').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_train, add_evaluate, add_precision, add_debias, add_predict, add_explain, add_bench, add_pack,
                add_export, add_serve, add_node, add_models):
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
