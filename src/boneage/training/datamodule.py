"""The datamodule: labels -> seeded split -> decode-once store -> batches of uint8 images (float16 films before
normalisation with `film_noise`), on the GPU when they fit.

Batches are cut by index from one uint8 tensor (`images[idx]`), never assembled sample by sample, so the loader costs
almost nothing next to a training step. Augmentation happens later, on the device (`BoneAgeModule`).
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    DistributedSampler,
    RandomSampler,
    SequentialSampler,
    WeightedRandomSampler,
)

from boneage.config import TrainConfig
from boneage.data.labels import LabelRow, read_labels
from boneage.data.split import save_split, shuffle_and_limit, split, split_by_ids
from boneage.data.store import open_store


class TensorBatches(Dataset):
    """Indexed by a list of indices: returns the whole batch (images (B, 1, S, S) uint8, male (B,), age (B,)).
    `images` is (N, S, S), or (V, N, S, S) for V versions of each film (as is, then its framings): each sample of a
    batch is drawn as one of its versions. `pairs`: each index is returned twice in a row, each copy with its own
    draw of version (the consistency pairs: rows 2k and 2k + 1 are one film)."""

    def __init__(self, images: torch.Tensor, male: torch.Tensor, age: torch.Tensor, pairs: bool = False):
        self.images, self.male, self.age, self.pairs = images, male, age, pairs

    def __len__(self) -> int:
        return len(self.age)

    def __getitem__(self, idx: list[int]):
        i = torch.as_tensor(idx, device=self.age.device)
        if self.pairs:
            i = i.repeat_interleave(2)
        if self.images.ndim == 4:
            version = torch.randint(self.images.shape[0], (len(i),), device=i.device)
            return self.images[version, i].unsqueeze(1), self.male[i], self.age[i]
        return self.images[i].unsqueeze(1), self.male[i], self.age[i]

    def to(self, device) -> TensorBatches:
        return TensorBatches(self.images.to(device), self.male.to(device), self.age.to(device), self.pairs)


class EpochBatchSampler(BatchSampler):
    """A BatchSampler that forwards `set_epoch`, so a DistributedSampler reshuffles every epoch."""

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)


def age_balance_weights(age_months: torch.Tensor, power: float) -> torch.Tensor:
    """Sampling weight per film: (films in its year of age) ** -power, so rare ages are seen more often."""
    years = (age_months.detach().cpu() / 12).long().clamp(0, 19)
    counts = torch.bincount(years, minlength=20).float()
    return counts[years] ** -power


def _tensors(records: list[LabelRow], store, framed: list = (), pairs: bool = False) -> TensorBatches:
    """The records' films from `store`, and from each framed store (by id) as further versions of them."""
    def gather(s):  # one gather from the memory map: (N, S, S)
        index = s.index
        return torch.from_numpy(s.pixels[[index[r.id] for r in records]])

    images = gather(store)
    if framed:
        versions = torch.empty((1 + len(framed), *images.shape), dtype=images.dtype)
        versions[0] = images
        for v, s in enumerate(framed, start=1):
            versions[v] = gather(s)
            # a framing that could not be decoded (its film could) stands in as the film as is
            lost = [n for n, r in enumerate(records) if r.id in s.failed]
            versions[v, lost] = images[lost]
        images = versions
    male = torch.tensor([float(r.male) for r in records])
    age = torch.tensor([r.age_months for r in records])
    return TensorBatches(images, male, age, pairs)


class BoneAgeData(L.LightningDataModule):
    def __init__(self, cfg: TrainConfig, log=print):
        super().__init__()
        self.cfg, self._print = cfg, log
        self.train_set: TensorBatches | None = None
        self.val_set: TensorBatches | None = None

    def load_split(self, save: bool = True) -> tuple[list[LabelRow], list[LabelRow]]:
        """Read labels, split, decode. Called once before the Trainer starts (and so before any DDP fork)."""
        cfg = self.cfg
        table = read_labels(cfg.labels, cfg.images)
        self._print(f"{cfg.labels}: {len(table.rows)} usable rows; {table.skipped_summary()}")
        for line in table.skipped[:5]:
            self._print(f"  skipped {line}")
        records = shuffle_and_limit(table.rows, cfg.seed, cfg.limit)
        store = open_store(records, cfg.preprocess, cfg.cache_dir, log=self._print, raw=cfg.film_noise > 0)
        if store.failed:
            self._print(f"{len(store.failed)} images could not be decoded and are skipped; first: "
                     f"{next(iter(store.failed.values()))}")
            records = [r for r in records if r.id not in store.failed]
        train, val = split_by_ids(records, cfg.val_ids) if cfg.val_ids else split(records, cfg.val_fraction, cfg.seed)
        if save:
            save_split(train, val, Path(cfg.out))
        framed = [self._framed(train, v) for v in range(1, cfg.framings + 1)]
        self.train_set = _tensors(train, store, framed, pairs=cfg.consistency > 0)
        self.val_set = _tensors(val, store)
        age = self.train_set.age
        self.age_stats = (float(age.mean()), float(age.std()) if len(age) > 1 else 0.0)  # too few: refused later
        return train, val

    def _framed(self, train: list[LabelRow], version: int):
        """The training films framed at random before the crop, version `version` (decoded once, then cached)."""
        cfg = self.cfg
        framing = {"version": version, "seed": cfg.seed, "rotate_deg": cfg.framing_rotate_deg,
                   "margin": cfg.framing_margin, "zoom": cfg.framing_zoom}
        return open_store(train, cfg.preprocess, cfg.cache_dir, log=self._print, raw=cfg.film_noise > 0,
                          framing=framing)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.load_split()
        device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
        if device.type == "cuda" and self._fits_on(device):
            self.train_set, self.val_set = self.train_set.to(device), self.val_set.to(device)

    def _fits_on(self, device: torch.device) -> bool:
        """device_cache "on" always; "auto" when the uint8 images take under a quarter of the free GPU memory."""
        if self.cfg.device_cache != "auto":
            return self.cfg.device_cache == "on"
        need = sum(t.images.numel() * t.images.element_size() for t in (self.train_set, self.val_set))
        free, _ = torch.cuda.mem_get_info(device)
        if need > free / 4:
            self._print(f"training images ({need / 1e9:.1f} GB) stay in host memory: too large for the GPU cache")
            return False
        return True

    def _loader(self, data: TensorBatches, train: bool) -> DataLoader:
        distributed = self.trainer is not None and self.trainer.world_size > 1
        if distributed:
            sampler = DistributedSampler(data, shuffle=train, seed=self.cfg.seed, drop_last=train)
        elif train and self.cfg.balance:
            sampler = WeightedRandomSampler(age_balance_weights(data.age, self.cfg.balance), len(data))
        else:
            sampler = RandomSampler(data) if train else SequentialSampler(data)
        # Indices per batch: films, each of which comes back twice when paired (batch_size counts images).
        batch_size = self.cfg.batch_size if train else self.cfg.batch_size * 2
        if data.pairs:
            batch_size //= 2
        # Drop a ragged last training batch only when there are full ones: a 1-image BatchNorm batch is noise.
        drop_last = train and len(data) > batch_size
        on_gpu = data.age.device.type == "cuda"
        return DataLoader(data, sampler=EpochBatchSampler(sampler, batch_size, drop_last), batch_size=None,
                          num_workers=0 if on_gpu else self.cfg.num_workers, pin_memory=not on_gpu and
                          torch.cuda.is_available())

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)
