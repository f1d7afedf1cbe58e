"""Bad input gets one line naming the file and the problem, a non-zero exit, and no traceback."""

import json
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import cli, run_cli


def _assert_one_line_error(result, *fragments):
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("boneage: error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def model(trained):
    return trained / "best.ckpt"


def test_predict_missing_file(model, tmp_path):  # one real process: what a user sees, end to end
    _assert_one_line_error(run_cli("predict", tmp_path / "nope.png", "--sex", "M", "--model", model),
                           "nope.png", "no such file")


def test_predict_truncated_image(model, synthetic, tmp_path):
    src = sorted(synthetic[0].iterdir())[0].read_bytes()
    (tmp_path / "cut.png").write_bytes(src[: len(src) // 2])
    _assert_one_line_error(cli("predict", tmp_path / "cut.png", "--sex", "F", "--model", model), "cut.png")


def test_predict_not_an_image(model, tmp_path):
    (tmp_path / "notes.png").write_text("hello")
    _assert_one_line_error(cli("predict", tmp_path / "notes.png", "--sex", "F", "--model", model),
                           "notes.png", "not an image")


def test_predict_bad_sex(model, synthetic):
    image = sorted(synthetic[0].iterdir())[0]
    _assert_one_line_error(cli("predict", image, "--sex", "X", "--model", model), "--sex")


def test_an_error_never_prints_terminal_control_codes(model, tmp_path):
    result = cli("predict", tmp_path / "\x1b[31mred\x1b[0m.png", "--sex", "M", "--model", model)
    _assert_one_line_error(result, "\\x1b[31mred\\x1b[0m.png: no such file")
    assert "\x1b" not in result.stderr

def test_checkpoint_that_is_not_one(tmp_path, synthetic):
    (tmp_path / "fake.ckpt").write_bytes(b"\x00garbage" * 10)
    image = sorted(synthetic[0].iterdir())[0]
    _assert_one_line_error(cli("predict", image, "--sex", "M", "--model", tmp_path / "fake.ckpt", "--no-checks"),
                           "fake.ckpt", "not a boneage checkpoint")


def test_evaluate_unknown_layout(model, synthetic, tmp_path):
    (tmp_path / "l.csv").write_text("a,b\n1,2\n")
    _assert_one_line_error(cli("evaluate", "--model", model, "--images", synthetic[0], "--labels",
                                   tmp_path / "l.csv"), "l.csv", "unknown label layout")


def test_train_missing_folder(tmp_path, synthetic):
    _assert_one_line_error(cli("train", "--images", tmp_path / "none", "--labels", synthetic[1], "--out",
                                   tmp_path / "r"), "none", "no such folder")


def test_train_with_a_few_bad_rows_trains_on_the_rest_and_says_so(tmp_path, synthetic):
    images, labels = synthetic
    rows = labels.read_text().splitlines()
    bad = rows[:41] + ["9999,100,True", "1001,,True", "1002,5000,False"]  # no image, no age, absurd age
    (tmp_path / "l.csv").write_text("\n".join(bad) + "\n")
    (tmp_path / "img").mkdir()
    for row in rows[1:41]:
        (tmp_path / "img" / f"{row.split(',')[0]}.png").write_bytes((images / f"{row.split(',')[0]}.png").read_bytes())
    Image.new("L", (3, 3)).save(tmp_path / "img" / "1001.png")
    (tmp_path / "img" / "1003.png").write_bytes(b"broken")  # listed in rows[:41], undecodable
    result = cli("train", "--images", tmp_path / "img", "--labels", tmp_path / "l.csv", "--out", tmp_path / "r",
                     "--arch", "tiny_cnn", "--image-size", "32", "--epochs", "1", "--batch-size", "8",
                     "--cache-dir", tmp_path / "cache")
    assert result.returncode == 0, result.stderr
    assert "3 rows skipped" in result.stderr and "no image" in result.stderr and "age out of range" in result.stderr
    assert "1 images could not be decoded" in result.stderr
    assert (tmp_path / "r" / "best.ckpt").is_file()


def test_evaluate_json_has_the_promised_keys(model, trained, synthetic, tmp_path):
    result = cli("evaluate", "--model", model, "--images", synthetic[0], "--labels", trained / "val.csv",
                     "--json", "--out", tmp_path / "ev", "--workers", "0")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert {"n", "mad_months", "rmse_months", "bias_months", "by_sex", "by_age_band"} <= set(report)
    for name in ("predictions.csv", "scatter.png", "bland_altman.png", "curves.png", "metrics.json"):
        assert (tmp_path / "ev" / name).is_file(), name


def test_predict_prints_months_and_years(model, synthetic):
    image = sorted(synthetic[0].iterdir())[0]
    result = cli("predict", image, "--sex", "F", "--model", model, "--no-checks")  # generated: not a real hand
    assert result.returncode == 0, result.stderr
    assert " months (" in result.stdout and " y " in result.stdout and "sex F" in result.stdout


def test_predict_path_does_not_import_lightning():
    import subprocess
    import sys

    code = "import sys, boneage.cli, boneage.inference.predictor; print('lightning' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "False"


@pytest.mark.parametrize("args", [["--lr", "-1"], ["--lr", "nan"], ["--epochs", "-3"], ["--batch-size", "0"],
                                  ["--workers", "-1"], ["--max-minutes", "-5"], ["--checkpoint-every", "0"],
                                  ["--limit", "0"], ["--warmup-epochs", "-1"], ["--devices", "two"],
                                  ["--precision", "foo"], ["--accelerator", "foo"], ["--seed", "-1"], ["--limit", "1"],
                                  ["--image-size", "100000"], ["--devices", "512"]],
                         ids=lambda a: " ".join(a))
def test_train_nonsense_numbers_are_one_line(tmp_path, synthetic, args):
    images, labels = synthetic
    small = ["--arch", "tiny_cnn", "--image-size", "32", "--epochs", "1", "--limit", "40", "--cache-dir",
             tmp_path / "c"]  # should a check fail, a short training, not the default 200 epochs
    result = cli("train", "--images", images, "--labels", labels, "--out", tmp_path / "r", *small, *args)
    _assert_one_line_error(result, args[0].lstrip("-").replace("-", "_").replace("workers", "num_workers"))
    assert not (tmp_path / "r").exists()  # refused before anything is written


SMALL = ["--arch", "tiny_cnn", "--image-size", "32", "--epochs", "1", "--limit", "40"]


@pytest.mark.parametrize("recipe, setting", [({"epochs": 1.5}, "epochs"), ({"preprocess": {"image_size": "big"}},
                                                                           "image_size"),
                                             ({"model": 5}, "model"), ({"seed": True}, "seed")],
                         ids=["fractional epochs", "text size", "model not a group", "seed true"])
def test_train_recipe_of_the_wrong_kind_is_one_line(tmp_path, synthetic, recipe, setting):
    (tmp_path / "recipe.json").write_text(json.dumps({"epochs": 1, "limit": 40, **recipe}))
    result = cli("train", "--images", synthetic[0], "--labels", synthetic[1], "--out", tmp_path / "r", "--config",
                 tmp_path / "recipe.json", "--cache-dir", tmp_path / "c")
    _assert_one_line_error(result, setting)
    assert not (tmp_path / "r").exists()


def test_train_out_naming_a_file_is_one_line(tmp_path, synthetic):
    (tmp_path / "notes.txt").write_text("mine\n")
    for out in (tmp_path / "notes.txt", tmp_path / "notes.txt" / "run"):
        _assert_one_line_error(cli("train", "--images", synthetic[0], "--labels", synthetic[1], "--out", out,
                                   "--cache-dir", tmp_path / "c", *SMALL), "notes.txt")
    assert (tmp_path / "notes.txt").read_text() == "mine\n"


def test_train_with_too_few_films_for_a_split_is_one_line_and_leaves_no_folder(tmp_path, synthetic):
    rows = synthetic[1].read_text().splitlines()
    (tmp_path / "two.csv").write_text("\n".join(rows[:3]) + "\n")
    result = cli("train", "--images", synthetic[0], "--labels", tmp_path / "two.csv", "--out", tmp_path / "r",
                 "--cache-dir", tmp_path / "c", *SMALL)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line or "arning" in line]
    assert len(errors) == 1 and errors[0].startswith("boneage: error: ") and "two.csv: 2 usable" in errors[0], errors
    assert not (tmp_path / "r").exists()


def test_more_processes_than_a_batch_of_films_each_is_refused(tmp_path, synthetic, monkeypatch):
    monkeypatch.setattr("os.cpu_count", lambda: 8)  # the same answer on a machine of any size
    result = cli("train", "--images", synthetic[0], "--labels", synthetic[1], "--out", tmp_path / "r", "--cache-dir",
                 tmp_path / "c", *SMALL, "--accelerator", "cpu", "--devices", "4", "--batch-size", "16")
    # the films are read (and said so) before their count can be checked: the refusal is the one error line
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("boneage: error: ")]
    assert len(errors) == 1 and "devices 4" in errors[0] and "fewer than a batch" in errors[0], result.stderr
    assert not (tmp_path / "r").exists()


def _copy_of_run(trained, tmp_path):
    import shutil

    return Path(shutil.copytree(trained, tmp_path / "copy", ignore=shutil.ignore_patterns(".lock")))


@pytest.mark.parametrize("size", ["empty", "half"])
def test_resume_from_a_truncated_or_empty_last_ckpt_is_one_line(trained, tmp_path, size):
    run = _copy_of_run(trained, tmp_path)
    data = (run / "last.ckpt").read_bytes()
    (run / "last.ckpt").write_bytes(b"" if size == "empty" else data[: len(data) // 2])
    _assert_one_line_error(cli("train", "--resume", "--out", run, "--epochs", "15"), "last.ckpt", "cannot resume")


@pytest.mark.parametrize("epochs", ["0", "-1"])
def test_resume_with_nonsense_epochs_is_one_line(trained, tmp_path, epochs):
    run = _copy_of_run(trained, tmp_path)
    _assert_one_line_error(cli("train", "--resume", "--out", run, "--epochs", epochs), "epochs")


def test_a_second_training_into_a_folder_in_use_is_refused(tmp_path, synthetic):
    import fcntl

    images, labels = synthetic
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.json").write_text("{}\n")
    with open(run / ".lock", "a") as held:  # as a training running in another process holds it
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        _assert_one_line_error(cli("train", "--images", images, "--labels", labels, "--out", run, "--arch",
                                   "tiny_cnn", "--image-size", "32", "--epochs", "1", "--limit", "40", "--cache-dir",
                                   tmp_path / "c"), "another training is running")
        _assert_one_line_error(cli("train", "--resume", "--out", run), "another training is running")
    assert (run / "config.json").read_text() == "{}\n" and sorted(p.name for p in run.iterdir()) == [".lock",
                                                                                                    "config.json"]
    _assert_one_line_error(cli("train", "--resume", "--out", run), "nothing to resume")
    with open(run / ".lock", "a") as again:  # the run refused inside the lock let go of it
        fcntl.flock(again, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_resume_trains_in_the_folder_given_not_the_one_its_config_names(trained, tmp_path):
    run = _copy_of_run(trained, tmp_path)
    original = {name: (trained / name).read_bytes() for name in ("last.ckpt", "best.ckpt", "metrics.csv")}
    result = cli("train", "--resume", "--out", run, "--epochs", "15")
    assert result.returncode == 0, result.stderr
    assert {name: (trained / name).read_bytes() for name in original} == original
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 15
    assert json.loads((run / "config.json").read_text())["out"] == str(run)


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


class _RunsCode:
    """Unpickled, it would run a shell command (as a crafted checkpoint from a shared drive could)."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        import os

        return os.system, (self.command,)


def test_resume_never_runs_code_from_a_crafted_last_ckpt(trained, tmp_path, monkeypatch):
    import torch

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # torch's unsafe default, forced
    run = _copy_of_run(trained, tmp_path)
    marker = tmp_path / "ran"
    torch.save({"state_dict": _RunsCode(f"touch {marker}"), "epoch": 1, "loops": {}, "optimizer_states": []},
               run / "last.ckpt")
    before = _files(run)
    _assert_one_line_error(cli("train", "--resume", "--out", run, "--epochs", "15"), "last.ckpt", "refused",
                           "posix.system")
    assert not marker.exists()
    assert _files(run) == before


def _zip_of_notes(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("notes.txt", "not a checkpoint")


@pytest.mark.parametrize("damage, args, fragments", [
    ("plain dict", ["--epochs", "15"], ["last.ckpt", "not a training checkpoint"]),
    ("zip of notes", ["--epochs", "15"], ["last.ckpt", "not a training checkpoint"]),
    ("weights only", ["--epochs", "15"], ["last.ckpt", "not a training checkpoint"]),
    ("corrupt config", [], ["config.json", "not valid JSON"]),
    ("config of the wrong kind", [], ["config.json", "epochs"]),
    ("none", ["--epochs", "3"], ["--epochs 3", "14 epochs already"]),
])
def test_resume_refusals_are_one_line_and_leave_the_run_untouched(trained, tmp_path, damage, args, fragments):
    import torch

    run = _copy_of_run(trained, tmp_path)
    if damage == "plain dict":
        torch.save({"a": torch.zeros(2)}, run / "last.ckpt")
    elif damage == "zip of notes":
        _zip_of_notes(run / "last.ckpt")
    elif damage == "weights only":
        (run / "last.ckpt").write_bytes((run / "best.ckpt").read_bytes())
    elif damage == "corrupt config":
        (run / "config.json").write_text('{"epochs": ')
    elif damage == "config of the wrong kind":
        (run / "config.json").write_text(json.dumps({**json.loads((run / "config.json").read_text()),
                                                     "epochs": "many"}))
    before = _files(run)
    _assert_one_line_error(cli("train", "--resume", "--out", run, *args), *fragments)
    assert _files(run) == before
