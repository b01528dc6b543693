"""Shared by the dataset-builder tests: writing a CSV source folder, reading what a build wrote."""

import json
import os

import numpy as np

CSV_HEADER = "source,question,answer,rating\n"


def write_source(folder, train_rows, test_rows) -> str:
    """A source folder with train.csv and test.csv holding the given data rows under the header."""
    os.makedirs(folder, exist_ok=True)
    for name, rows in (("train", train_rows), ("test", test_rows)):
        with open(os.path.join(folder, f"{name}.csv"), "w") as csv_file:
            csv_file.write(CSV_HEADER + "".join(f"{row}\n" for row in rows))
    return str(folder)


def load_field(folder, split, field) -> np.ndarray:
    """One array of a built dataset: <folder>/<split>/all__<field>.npy."""
    return np.load(os.path.join(folder, split, f"all__{field}.npy"))


def load_json(folder, *path) -> object:
    """A JSON file of a built dataset, e.g. load_json(out, "train", "dataset.json")."""
    with open(os.path.join(folder, *path)) as json_file:
        return json.load(json_file)


def assert_int32_fields(folder, split, expected_fields) -> None:
    """The index arrays of a split: int32, with the given contents ({field: values})."""
    for field, expected in expected_fields.items():
        array = load_field(folder, split, field)
        assert array.dtype == np.int32, f"{split}/all__{field}.npy is {array.dtype}, not int32"
        np.testing.assert_array_equal(array, expected)
