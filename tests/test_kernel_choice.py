"""Choosing an optional kernel (models/kernel_choice.py): the first candidate whose check passes,
once per device and key. The candidates here are stand-in checks."""

import warnings

import pytest
import torch

from models import kernel_choice
from models.kernel_choice import check_against_references, choose_kernel, relative_error

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def empty_cache(monkeypatch):
    monkeypatch.setattr(kernel_choice, "_choices", {})


def passing():
    pass


def missing_package():
    raise ImportError("No module named 'quack'")


def failing():
    raise RuntimeError("compilation failed")


def wrong_values():
    reference = torch.ones(8)
    check_against_references({"swiglu": (lambda x: x * 1.1, lambda x: x, (reference,))})


def choose(key="key", **checks):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        name = choose_kernel("Test kernel", CPU, key, lambda: checks)
    return name, [str(warning.message) for warning in caught]


def test_the_first_passing_candidate_is_chosen():
    assert choose(first=passing, second=passing) == ("first", [])


def test_a_package_that_is_not_installed_is_skipped_silently():
    assert choose(quack=missing_package, other=passing) == ("other", [])


@pytest.mark.parametrize("broken", [failing, wrong_values], ids=["raises", "wrong values"])
def test_a_candidate_that_fails_or_disagrees_is_skipped_with_a_warning(broken):
    name, messages = choose(quack=broken, other=passing)
    assert name == "other"
    assert len(messages) == 1 and messages[0].startswith("Test kernel 'quack' skipped on cpu")
    expected = "compilation failed" if broken is failing else "swiglu differs from PyTorch by 0.1 (relative)"
    assert expected in messages[0]


def test_no_passing_candidate_gives_none():
    name, messages = choose(quack=failing, other=missing_package)
    assert name is None and len(messages) == 1


def test_the_choice_is_made_once_per_key():
    runs = []

    def counted(name):
        def check():
            runs.append(name)

        return check

    for _ in range(3):
        assert choose(key=("bf16", 64), first=counted("first")) == ("first", [])
    assert runs == ["first"]
    # Another key (or device) is checked afresh; a cached None is kept too.
    assert choose(key=("bf16", 128), first=counted("first"), second=counted("second")) == ("first", [])
    assert runs == ["first", "first"]
    assert choose(key="none", quack=missing_package) == (None, [])
    assert choose(key="none", quack=passing) == (None, [])


def test_relative_error_and_the_check_against_references():
    assert relative_error(torch.tensor([3.0, 4.0]), torch.tensor([3.0, 0.0])) == pytest.approx(4 / 3)
    same = (lambda x: (x, 2 * x), lambda x: (x, 2 * x), (torch.randn(5),))
    check_against_references({"pair": same})
    off_in_second = (lambda x: (x, 2.1 * x), lambda x: (x, 2 * x), (torch.randn(5),))
    with pytest.raises(RuntimeError, match="pair differs from PyTorch by 0.05 "):
        check_against_references({"pair": off_in_second})
