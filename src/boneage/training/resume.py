"""Reading RUN_DIR/last.ckpt to continue a run: as tensors and plain values only, never as code.

A run folder may come from elsewhere (a shared drive, a colleague's archive), and a pickle can run anything it names.
torch.load(weights_only=True) refuses every global outside torch's allow-list, whatever torch's default; passed
explicitly it also holds against TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, which overrides only an unset argument. Lightning's
checkpoints need nothing beyond that list (tensors, OrderedDict, numbers, strings).
"""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from boneage.errors import UserError

# What Lightning needs to continue a fit; best.ckpt and weights files lack the optimiser and loop states.
_TRAINING_STATE = ("state_dict", "epoch", "loops", "optimizer_states")


def load_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, on the CPU; one line for anything that is not a whole training checkpoint."""
    path = Path(path)
    try:  # torch.save writes a zip: an empty or cut-short file (full disk, interrupted copy) fails here
        with zipfile.ZipFile(path) as z:
            damaged = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise UserError(f"{path}: empty or truncated checkpoint, cannot resume from it ({exc})") from None
    if damaged is not None:
        raise UserError(f"{path}: damaged checkpoint ({damaged} fails its checksum), cannot resume from it")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise UserError(f"{path}: refused, it asks to load code or objects{what} that a training checkpoint never "
                        "holds; cannot resume from it") from None
    except Exception as exc:  # a zip of something else: torch's errors are many and long
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path}: not a training checkpoint, cannot resume from it ({reason})") from None
    if not isinstance(checkpoint, dict) or any(key not in checkpoint for key in _TRAINING_STATE):
        raise UserError(f"{path}: not a training checkpoint (no optimiser and loop state), cannot resume from it")
    return checkpoint


def epochs_done(checkpoint: dict[str, Any]) -> int:
    """Completed epochs, as Lightning counts them when it restores the loop (its `current_epoch`)."""
    try:
        return int(checkpoint["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"])
    except (KeyError, TypeError, ValueError):
        return int(checkpoint.get("epoch") or 0)
