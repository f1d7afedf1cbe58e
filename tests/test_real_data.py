"""On the real RSNA radiographs beside the repository (../shared), when they are there; skipped elsewhere."""

import csv

import numpy as np
import pytest

from boneage.data.labels import read_labels
from tests.conftest import REPO, SHARED

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason=f"no RSNA data at {SHARED}: real-data tests skipped")


def test_the_training_table_reads_whole():
    table = read_labels(SHARED / "boneage-training-dataset.csv", SHARED / "boneage-training-dataset")
    ages = np.array([r.age_months for r in table.rows])
    assert len(table.rows) == 12611 and not table.skipped
    assert sum(r.male for r in table.rows) == 6833
    assert ages.mean() == pytest.approx(127.3, abs=0.1)


def test_the_shipped_model_on_held_out_radiographs():
    """60 images of the shipped model's own validation split, unchecked: the quality checks refuse a few real
    films (3337 reads as inverted), and this test is about the number, not the checks."""
    import boneage

    rows = list(csv.DictReader((REPO / "docs" / "reference-model" / "val.csv").open()))[:60]
    model = boneage.load_model(runtime="torch")
    pred = np.array([boneage.assess(SHARED / "boneage-training-dataset" / f"{r['id']}.jpg", r["male"] == "True",
                                    model=model, check=False).bone_age_months for r in rows])
    true = np.array([float(r["boneage"]) for r in rows])
    assert np.mean(np.abs(pred - true)) < 12.0  # far under the 34-month MAD of predicting the mean
