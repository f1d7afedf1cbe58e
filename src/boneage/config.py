"""Configuration as typed dataclasses. The poster's recipe *is* the defaults of `TrainConfig`.

Every run writes its resolved `TrainConfig` to `RUN_DIR/config.json` and into each checkpoint, so a result can be
reproduced from its folder. `Preprocess` travels inside every checkpoint and every shipped weights file: training,
evaluation, explanation and the service all build their input from it, and from nothing else.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boneage.bias import BiasCorrection
from boneage.errors import UserError


@dataclass(frozen=True)
class Preprocess:
    """How a radiograph of any size, bit depth and exposure becomes the model's input."""

    image_size: int = 299  # pixels a side; Inception v3's native input
    channels: int = 3  # the gray image repeated, so ImageNet-shaped trunks take it unchanged
    resize: str = "stretch"  # "stretch": squeeze to a square, as the RSNA copy was made; "pad": keep aspect, pad
    # "hand": cut the film to the hand's bounding box before resizing, so margins, framing and the hand's position on
    # the film stop mattering; "hand-in-plate": the same, and on a film whose bright region is a plate (the detector's
    # field, a light box) the hand inside the plate; "none": the whole film (the first reference model).
    # See `boneage.data.crop`.
    crop: str = "none"
    # Per-image intensity normalisation. "equalize" (histogram equalisation) maps any strictly increasing change of
    # gray levels (contrast, brightness, gamma, 16-bit windowing) to the same image; see benchmarks/intensity.py. With
    # `clip_limit` > 0 only a linear change still is (gamma 1.5 moves the input by about 19 of 255: docs/training.md).
    intensity: str = "equalize"  # "equalize" | "percentile" | "none"
    percentiles: tuple[float, float] = (0.5, 99.5)  # for intensity="percentile"
    # For intensity="equalize": 0 is plain equalisation. A limit c > 0 caps every gray level's share of the mapping at
    # c times the uniform share (a global CLAHE): a flat background holding half the film then no longer spreads its
    # compression noise over half the output range. See benchmarks/intensity.py.
    clip_limit: float = 0.0
    mean: float = 0.5  # of the normalised [0, 1] image; an equalised image is uniform on [0, 1]
    std: float = 0.29  # 1/sqrt(12): the std of a uniform distribution on [0, 1]

    def __post_init__(self):
        check_types(self, "preprocess")
        if self.resize not in ("stretch", "pad"):
            raise UserError(f"preprocess: resize must be 'stretch' or 'pad', not {self.resize!r}")
        if self.crop not in ("none", "hand", "hand-in-plate"):
            raise UserError(f"preprocess: crop must be 'none', 'hand' or 'hand-in-plate', not {self.crop!r}")
        if self.clip_limit < 0 or 0 < self.clip_limit < 1:
            raise UserError(f"preprocess: clip_limit must be 0 (off) or at least 1, not {self.clip_limit}")
        if self.intensity not in ("equalize", "percentile", "none"):
            raise UserError(f"preprocess: intensity must be equalize, percentile or none, not {self.intensity!r}")
        if self.channels not in (1, 3):
            raise UserError(f"preprocess: channels must be 1 or 3, not {self.channels}")
        if self.image_size < 32:
            raise UserError(f"preprocess: image_size {self.image_size} is too small (at least 32)")


POOL_IMPLS = ("native", "conv", "sum")  # see boneage.models.pooling


def check_pool_impl(impl: str) -> None:
    if impl not in POOL_IMPLS:
        raise UserError(f"model: pool_impl must be one of {', '.join(POOL_IMPLS)}, not {impl!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: a trunk from the registry and the poster's sex-aware regression head."""

    arch: str = "inception_v3"
    sex_units: int = 16  # sex (male 1, female 0) -> FC 16 + ReLU
    hidden: tuple[int, ...] = (1000, 500)  # FC + ReLU layers after concatenation
    # The head predicts a z-score that is mapped back to months with the training labels' statistics, so the linear
    # output starts near the right scale instead of climbing from 0 to ~127 months one Adam step at a time.
    age_mean: float = 127.3  # months
    age_std: float = 41.2  # months
    # How Inception v3's 3x3 stride-1 average pools are computed: "native" (F.avg_pool2d), "conv" (a depthwise
    # convolution) or "sum" (shifted slices). The same function to float rounding, with the same weights: a speed
    # setting only, for inception_v3 only. See boneage.models.pooling.
    pool_impl: str = "native"

    def __post_init__(self):
        check_types(self, "model")
        check_pool_impl(self.pool_impl)
        if any(units < 1 for units in self.hidden) or self.sex_units < 1:
            raise UserError(f"model: hidden and sex_units must be at least 1 unit each, not {self.hidden}, "
                            f"{self.sex_units}")


@dataclass(frozen=True)
class ModelSpec:
    """What inference needs of a model, and all it reads: the network and the preprocessing it was trained with.

    A checkpoint or weights file stores its whole training configuration (for provenance, under `training` when
    exported); inference reads only `model` and `preprocess`, so training options can come and go without making
    shipped weights or ONNX exports unloadable."""

    model: ModelConfig
    preprocess: Preprocess
    training: dict[str, Any] | None = None  # the run's settings as saved, not interpreted
    # The map that removes the model's bias by age from its answers (boneage.bias), fitted on held-out
    # films after training; None for a checkpoint fresh from training.
    bias_correction: BiasCorrection | None = None

    @classmethod
    def from_config(cls, config: dict[str, Any], where: str = "config") -> ModelSpec:
        """From a saved training config or spec: its "model" and "preprocess" parts (missing ones: defaults)."""
        if not isinstance(config, dict):
            raise UserError(f"{where}: the model description is not a JSON object")
        training = config.get("training") or {k: v for k, v in config.items()
                                              if k not in ("model", "preprocess", "bias_correction")}
        return cls(model_config_from_dict(dict(config.get("model") or {}), f"{where} model"),
                   preprocess_from_dict(dict(config.get("preprocess") or {}), f"{where} preprocess"),
                   training or None, BiasCorrection.from_dict(config.get("bias_correction"), where))


@dataclass
class TrainConfig:
    """The training recipe. Defaults: the poster (Adam 1e-3, plateau schedule, 200 epochs, batch 16, flips)."""

    # data
    images: str = ""
    labels: str = ""
    out: str = "runs/default"
    limit: int | None = None  # train on the first N rows after a seeded shuffle
    val_fraction: float = 0.2
    seed: int = 42
    # A label CSV whose ids are the validation set (e.g. docs/reference-model/val.csv): every run, whatever its seed
    # or limit, is then scored on the same films and never trains on them. None: a seeded split of val_fraction.
    val_ids: str | None = None
    cache_dir: str | None = None  # where decoded image stores live; default ~/.cache/boneage
    preprocess: Preprocess = field(default_factory=Preprocess)
    # model
    model: ModelConfig = field(default_factory=ModelConfig)
    # Weights to start from (a checkpoint or weights file of the same architecture): a warm restart of the schedule
    # that builds on the best model so far instead of starting over. None: from scratch, as the poster.
    init_from: str | None = None
    # optimisation
    epochs: int = 200
    batch_size: int = 16
    lr: float = 1e-3  # at the reference batch size below
    lr_reference_batch: int = 16
    lr_scaling: str = "none"  # "none" | "sqrt" | "linear": how lr grows with batch_size / lr_reference_batch
    weight_decay: float = 0.0
    schedule: str = "plateau"  # "plateau" (the poster) | "cosine" (for a fixed budget of epochs)
    plateau_factor: float = 0.8
    plateau_patience: int = 10
    plateau_cooldown: int = 5
    min_lr: float = 1e-4
    warmup_epochs: float = 0  # linear warm-up, with schedule="cosine"; a fraction for a short fine-tune
    # An exponential moving average of the weights (decay per step; 0: off): validation, best.ckpt and the end of the
    # run use the average, training goes on with the weights themselves. At a low lr the validation MAD of the weights
    # moves by ~0.1 month from epoch to epoch; the average of the last ~1/(1 - decay) steps does not.
    ema_decay: float = 0.0
    # augmentation, applied to whole batches on the training device
    hflip: bool = True
    vflip: bool = True
    contrast: float = 0.3  # contrast factor drawn from [1 - c, 1 + c]
    brightness: float = 0.1  # additive shift in [-b, b] on the [0, 1] image
    gamma: float = 0.3  # gamma drawn log-uniformly from [1/(1+g), 1+g]
    # Age-balanced sampling (the poster's "balanced splits"): draw each film with weight n(its year of age) ** -balance.
    # 0 samples uniformly (the poster); 0.5 halves the log-ratio between common and rare ages (the youngest children).
    balance: float = 0.0
    rotate_deg: float = 0.0  # affine augmentation, off in the poster's recipe
    scale: float = 0.0
    translate: float = 0.0
    # Degradations, off in the poster's recipe: half of each batch at a resolution up to `low_res` lower, a Gaussian
    # blur of sigma up to `blur` pixels, noise of SD up to `noise` (on the [0, 1] scale) - so that re-saving, scanning
    # or a noisier detector does not move the answer.
    low_res: float = 0.0
    blur: float = 0.0
    noise: float = 0.0
    # Noise of SD up to `film_noise` gray levels (of 255) added to the film before its intensity normalisation, as a
    # detector's noise reaches inference: the normalisation amplifies it on dark films (augment.film_noise). Needs
    # intensity "equalize" with a clip_limit; the store then holds films before normalisation (float16, 2x memory).
    film_noise: float = 0.0
    # The share of training films whose gray range is narrowed before `film_noise`, toward their darkest level by a
    # factor drawn from [0.25, 1] (augment.narrow_range): a film of a narrow range is where a detector's noise moves
    # the answer (2026-12-07: of 300 validation films, the 40 spanning under 80 of 255 levels move by SD 4.3 months
    # under sensor noise, the other 260 by 0.8). Needs film_noise.
    film_narrow: float = 0.0
    # Framings of the whole film before the hand crop, as a technician frames it: rotated by up to
    # `framing_rotate_deg`, on a canvas up to `framing_margin` wider at a random place, or zoomed in up to
    # `framing_zoom`. `framings` versions of each training film are drawn once (seeded) and decoded once, each cut to
    # the hand exactly as inference cuts it (its fallback included); every sample is the film as is or one of them.
    # The in-batch `rotate_deg`/`scale`/`translate` move the crop; these move the film under the crop. Memory:
    # (1 + framings) x the training films.
    framings: int = 0
    framing_rotate_deg: float = 15.0
    framing_margin: float = 0.25
    framing_zoom: float = 0.15
    # Consistency between two views of one film (0: off). Each training film appears twice in its batch, each copy
    # with its own draw of version (framing) and augmentation, and the loss adds `consistency` x the mean |difference|
    # of the two answers: precision (the same film framed, rotated or noised otherwise gets the same answer) taught
    # directly, where the L1 to the label alone is as content with errors of -3 and +3 months as with two of +3.
    # Per pair the loss is (|e1| + |e2|) / 2 + consistency x |e1 - e2| (e: answer - label): at 0.5 it is the larger
    # error of the two when both err the same way; above 0.5 the two answers are pulled together harder than toward the
    # label. A batch holds batch_size / 2 films, and an epoch (every film once, as a pair) takes twice the steps.
    consistency: float = 0.0
    # hardware
    accelerator: str = "auto"
    devices: str | int = "auto"
    num_nodes: int = 1
    # None: bf16-mixed on GPUs and on CPUs with bf16 matrix units (AMX), 32-true elsewhere
    precision: str | None = None
    compile: bool = False
    channels_last: bool = True
    device_cache: str = "auto"  # keep the uint8 training set on the GPU: "auto" | "on" | "off"
    num_workers: int = 0
    max_minutes: float | None = None  # stop (and save) after this wall time
    checkpoint_every: int = 1  # epochs between last.ckpt saves

    @property
    def effective_lr(self) -> float:
        ratio = self.batch_size / self.lr_reference_batch
        return self.lr * {"none": 1.0, "sqrt": ratio**0.5, "linear": ratio}[self.lr_scaling]

    def validate(self, where: str = "config") -> None:
        """Every setting's type and range, and the names torch and Lightning take, before anything is written."""
        check_types(self, where)
        _check_numbers(self, where)
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"{where}: seed must be between 0 and {MAX_SEED}, not {self.seed}")
        if not 1 <= self.preprocess.image_size <= MAX_IMAGE_SIZE:  # each trunk's least: training.train
            raise UserError(f"{where}: image_size {self.preprocess.image_size} is out of range: at most "
                            f"{MAX_IMAGE_SIZE} pixels")
        if self.precision is not None and self.precision not in PRECISIONS:
            raise UserError(f"{where}: precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.accelerator not in ACCELERATORS:
            raise UserError(f"{where}: accelerator must be one of {', '.join(ACCELERATORS)}, not "
                            f"{self.accelerator!r}")
        if self.limit is not None and self.limit < 3:
            raise UserError(f"{where}: limit must be at least 3 (two films to train on, one to validate), not "
                            f"{self.limit}")
        if self.lr_scaling not in ("none", "sqrt", "linear"):
            raise UserError(f"{where}: lr_scaling must be none, sqrt or linear, not {self.lr_scaling!r}")
        if self.schedule not in ("plateau", "cosine"):
            raise UserError(f"{where}: schedule must be plateau or cosine, not {self.schedule!r}")
        if not 0 < self.val_fraction < 1:
            raise UserError(f"{where}: val_fraction must be between 0 and 1, not {self.val_fraction}")
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise UserError(f"{where}: {name} must be at least 1")
        if self.low_res >= 1:
            raise UserError(f"{where}: low_res must be below 1, not {self.low_res:g}")
        if self.film_noise and not (self.preprocess.intensity == "equalize" and self.preprocess.clip_limit):
            raise UserError(f"{where}: film_noise needs intensity 'equalize' with a clip_limit above 0 (the "
                            f"normalisation training repeats on the device), not intensity "
                            f"{self.preprocess.intensity!r} with clip_limit {self.preprocess.clip_limit:g}")
        if self.film_narrow and not self.film_noise:
            raise UserError(f"{where}: film_narrow narrows films for film_noise: set film_noise above 0")
        if self.film_narrow > 1:
            raise UserError(f"{where}: film_narrow is a share of films, at most 1, not {self.film_narrow:g}")
        if not 0 <= self.balance <= 1:
            raise UserError(f"{where}: balance must be between 0 and 1, not {self.balance}")
        if self.consistency and (self.batch_size < 4 or self.batch_size % 2):
            raise UserError(f"{where}: consistency pairs the films of a batch: batch_size must be even and at least 4, "
                            f"not {self.batch_size}")


MAX_SEED = 2**32 - 1  # numpy's seeds
# Each decoded film takes image_size² bytes in the cache and in memory: 1024 px is 14 GB for the RSNA set.
MAX_IMAGE_SIZE = 1024
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed", "bf16-true", "16-true", "64-true")
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")


# (setting, least value, whether the least is allowed): what would make torch or Lightning fail with a traceback,
# or train silently on nonsense (a negative learning rate climbs the loss).
_NUMBER_RANGES = (
    ("epochs", 1, True), ("batch_size", 1, True), ("limit", 1, True), ("lr", 0, False), ("lr_reference_batch", 1, True),
    ("weight_decay", 0, True), ("plateau_factor", 0, False), ("plateau_patience", 0, True),
    ("plateau_cooldown", 0, True), ("min_lr", 0, True), ("warmup_epochs", 0, True), ("contrast", 0, True),
    ("brightness", 0, True), ("gamma", 0, True), ("rotate_deg", 0, True), ("scale", 0, True), ("translate", 0, True),
    ("low_res", 0, True), ("blur", 0, True), ("noise", 0, True), ("film_noise", 0, True), ("film_narrow", 0, True),
    ("ema_decay", 0, True),
    ("framings", 0, True), ("framing_rotate_deg", 0, True), ("framing_margin", 0, True), ("framing_zoom", 0, True),
    ("consistency", 0, True), ("num_nodes", 1, True), ("num_workers", 0, True), ("max_minutes", 0, False),
    ("checkpoint_every", 1, True), ("val_fraction", 0, False),
)


def _check_numbers(cfg: TrainConfig, where: str) -> None:
    """One line for a numeric setting that is not a number or out of range (`--lr -1`, `--epochs 0`, nan)."""
    for name, least, inclusive in _NUMBER_RANGES:
        value = getattr(cfg, name)
        if value is None and name in ("limit", "max_minutes"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise UserError(f"{where}: {name} must be a number, not {value!r}")
        if value < least or (value == least and not inclusive):
            raise UserError(f"{where}: {name} must be {'at least' if inclusive else 'above'} {least}, not {value:g}")
    if cfg.ema_decay >= 1:
        raise UserError(f"{where}: ema_decay must be below 1, not {cfg.ema_decay:g}")
    if cfg.plateau_factor >= 1:
        raise UserError(f"{where}: plateau_factor must be below 1, not {cfg.plateau_factor:g}")
    if str(cfg.devices) != "auto" and not (str(cfg.devices).isdigit() and int(cfg.devices) >= 1):
        raise UserError(f"{where}: devices must be auto or a number of devices, not {cfg.devices!r}")


def check_types(obj, where: str) -> None:
    """One line for a setting of the wrong kind (`"epochs": 1.5`, `"image_size": "big"`), which would otherwise fail
    deep inside torch or be passed on silently."""
    for name, kind in _field_types(type(obj)).items():
        value = getattr(obj, name)
        if not _is_a(value, kind):
            raise UserError(f"{where}: {name} must be {_describe(kind)}, not {value!r}")


@functools.cache
def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_a(value, kind) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_is_a(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if origin is tuple:
        if not isinstance(value, (tuple, list)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_is_a(v, args[0]) for v in value)
        return len(value) == len(args) and all(_is_a(v, a) for v, a in zip(value, args))
    if origin is not None:
        return isinstance(value, origin)
    return isinstance(value, kind)


def _describe(kind) -> str:
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(kind))
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    if kind in names:
        return names[kind]
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        return "a list" if args[-1] is Ellipsis else f"a list of {len(args)}"
    return "a group of settings" if dataclasses.is_dataclass(kind) else getattr(kind, "__name__", str(kind))


def to_dict(obj) -> dict[str, Any]:
    return dataclasses.asdict(obj)


def _build(cls, data: dict[str, Any], where: str):
    """Build a dataclass from a dict, refusing unknown keys (a typo in an override file must not pass silently)."""
    known = {f.name: f for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if not k.startswith("_")}  # "_comment" and the like: notes for readers
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise UserError(f"{where}: unknown setting(s) {', '.join(unknown)}")
    kwargs = {}
    for name, value in data.items():
        if name == "preprocess" and isinstance(value, dict):
            value = preprocess_from_dict(value, where)
        elif name == "model" and isinstance(value, dict):
            value = model_config_from_dict(value, where)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def preprocess_from_dict(data: dict[str, Any], where: str = "preprocess") -> Preprocess:
    return _build(Preprocess, data, where)


def model_config_from_dict(data: dict[str, Any], where: str = "model") -> ModelConfig:
    return _build(ModelConfig, data, where)


def train_config_from_dict(data: dict[str, Any], where: str = "config") -> TrainConfig:
    return _build(TrainConfig, data, where)


def train_config(recipe: dict[str, Any] | None = None, overrides: dict[str, Any] | None = None,
                 where: str = "config") -> TrainConfig:
    """The defaults, then a recipe (nested, as in recipes/*.json), then flat overrides such as command-line flags
    (`image_size`, `arch` land in the group that holds them). Without an `out`, the run folder is runs/ARCH."""
    settings = to_dict(TrainConfig())
    if recipe:
        settings = merge(settings, recipe)
    groups = _nested_groups()
    for name, value in (overrides or {}).items():
        if name in groups:
            if isinstance(settings[groups[name]], dict):  # else refused below, as the recipe's mistake
                settings[groups[name]] = {**settings[groups[name]], name: value}
        elif name in settings:
            settings[name] = value
        else:
            raise UserError(f"{where}: unknown setting {name}")
    if not (overrides or {}).get("out") and not (recipe or {}).get("out"):
        arch = settings["model"].get("arch") if isinstance(settings["model"], dict) else None
        settings["out"] = str(Path("runs") / str(arch or ModelConfig.arch))
    cfg = train_config_from_dict(settings, where)
    cfg.validate(where)
    return cfg


@functools.cache
def _nested_groups() -> dict[str, str]:
    """{setting: the TrainConfig field of the group holding it}, e.g. {"image_size": "preprocess", "arch": "model"}."""
    hints = _field_types(TrainConfig)
    groups = {}
    for group, kind in hints.items():
        if dataclasses.is_dataclass(kind):
            for f in dataclasses.fields(kind):
                if f.name in groups or f.name in hints:
                    raise AssertionError(f"setting {f.name} is ambiguous")
                groups[f.name] = group
    return groups


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Nested dict update: an override file may set `{"preprocess": {"image_size": 512}}` alone."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_json(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object of settings")
    return data
