"""AdamATan2 against a direct transcription of its update rule, state round trip, and the builder."""

import io
import math

import pytest
import torch

from models.optimizers import AdamATan2, build_adam_atan2

BETAS = (0.9, 0.95)
WEIGHT_DECAY = 0.1
# Warmup from lr = 0, then a changing lr, as the training loop sets it through param_groups.
LRS = [0.0, 1e-3, 2e-3, 3e-3, 3e-3, 2.5e-3, 2e-3, 1e-3, 5e-4, 1e-4]


def transcribed_rule(params, grads_per_step, lrs, betas, weight_decay):
    """The update rule of docs/model.md ("Optimisers"), in float64, one tensor at a time."""
    b1, b2 = betas
    params = [p.double().clone() for p in params]
    m = [torch.zeros_like(p) for p in params]
    v = [torch.zeros_like(p) for p in params]
    for t, (grads, lr) in enumerate(zip(grads_per_step, lrs), start=1):
        for i, g in enumerate(grads):
            g = g.double()
            params[i] = params[i] * (1 - lr * weight_decay)
            m[i] = m[i] + (1 - b1) * (g - m[i])
            v[i] = v[i] + (1 - b2) * (g * g - v[i])
            params[i] = params[i] - (lr / (1 - b1**t)) * torch.atan2(m[i], torch.sqrt(v[i]) / math.sqrt(1 - b2**t))
    return params


def random_problem(seed=0, steps=len(LRS)):
    generator = torch.Generator().manual_seed(seed)
    shapes = [(13, 7), (5,), (2, 3, 4), (1,)]
    params = [torch.randn(shape, generator=generator) for shape in shapes]
    # Gradients of very different scales, and an exact zero, which atan2 handles without epsilon.
    grads = [[torch.randn(shape, generator=generator) * 10.0 ** (i - 2) for i, shape in enumerate(shapes)] for _ in range(steps)]
    grads[0][3].zero_()
    return params, grads


def run_ours(params, grads_per_step, lrs, foreach, betas=BETAS, weight_decay=WEIGHT_DECAY):
    params = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = AdamATan2(params, lr=lrs[0], betas=betas, weight_decay=weight_decay, foreach=foreach)
    for grads, lr in zip(grads_per_step, lrs):
        for p, g in zip(params, grads):
            p.grad = g.clone()
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
    return [p.detach() for p in params]


@pytest.mark.parametrize("foreach", [True, False])
def test_adam_atan2_equals_transcribed_rule_over_ten_steps(foreach):
    params, grads = random_problem()
    expected = transcribed_rule(params, grads, LRS, BETAS, WEIGHT_DECAY)
    ours = run_ours(params, grads, LRS, foreach)
    for mine, reference in zip(ours, expected):
        assert torch.allclose(mine.double(), reference, rtol=1e-6, atol=1e-6)


def test_lr_zero_leaves_parameters_unchanged_but_updates_moments():
    params, grads = random_problem(steps=1)
    p = torch.nn.Parameter(params[0].clone())
    optimizer = AdamATan2([p], lr=0.0, betas=BETAS, weight_decay=WEIGHT_DECAY)
    p.grad = grads[0][0]
    optimizer.step()
    assert torch.equal(p.detach(), params[0])
    assert torch.allclose(optimizer.state[p]["exp_avg"], 0.1 * grads[0][0])
    assert optimizer.state[p]["step"].item() == 1


def test_multi_tensor_and_per_tensor_paths_agree_exactly():
    params, grads = random_problem(seed=1)
    for fast, slow in zip(run_ours(params, grads, LRS, True), run_ours(params, grads, LRS, False)):
        assert torch.equal(fast, slow)


def test_parameters_without_gradient_are_skipped():
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(3))
    optimizer = AdamATan2([a, b], lr=0.1)
    a.grad = torch.ones(3)
    optimizer.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in optimizer.state
    # Steps counted per parameter: b starts its bias correction at 1 later.
    b.grad = torch.ones(3)
    optimizer.step()
    assert optimizer.state[a]["step"].item() == 2 and optimizer.state[b]["step"].item() == 1


@pytest.mark.parametrize("foreach", [True, False])
def test_state_dict_round_trip_resumes_bit_identically(foreach):
    params, grads = random_problem(seed=2)
    k = 4

    straight = [torch.nn.Parameter(p.clone()) for p in params]
    optimizer = AdamATan2(straight, lr=1e-3, betas=BETAS, weight_decay=WEIGHT_DECAY, foreach=foreach)
    checkpoint = io.BytesIO()
    for step, step_grads in enumerate(grads[: k + 1]):
        if step == k:
            # Serialised at once, as a checkpoint is: state_dict() holds live references.
            torch.save({"params": [p.detach() for p in straight], "optimizer": optimizer.state_dict()}, checkpoint)
        for p, g in zip(straight, step_grads):
            p.grad = g.clone()
        optimizer.param_groups[0]["lr"] = LRS[step]
        optimizer.step()

    checkpoint.seek(0)
    saved = torch.load(checkpoint)
    resumed = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    fresh = AdamATan2(resumed, lr=123.0, betas=(0.5, 0.5), weight_decay=0.0, foreach=foreach)
    fresh.load_state_dict(saved["optimizer"])
    for p, g in zip(resumed, grads[k]):
        p.grad = g.clone()
    fresh.param_groups[0]["lr"] = LRS[k]
    fresh.step()

    for a, b in zip(straight, resumed):
        assert torch.equal(a.detach(), b.detach())


@pytest.mark.parametrize("kwargs, message", [(dict(lr=-1.0), "learning rate"), (dict(betas=(0.9, 1.0)), "betas"), (dict(weight_decay=-0.1), "weight_decay")])
def test_invalid_hyperparameters_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdamATan2([torch.nn.Parameter(torch.ones(1))], **kwargs)


def test_constructor_defaults_match_the_adam_atan2_package():
    optimizer = AdamATan2([torch.nn.Parameter(torch.ones(1))])
    group = optimizer.param_groups[0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (1e-3, (0.9, 0.999), 1e-2)


def test_builder_uses_ours_on_cpu_and_says_so(capsys):
    params = [torch.nn.Parameter(torch.ones(2))]
    optimizer = build_adam_atan2(iter(params), lr=0.0, betas=BETAS, weight_decay=WEIGHT_DECAY)
    assert type(optimizer) is AdamATan2
    assert optimizer.param_groups[0]["betas"] == BETAS
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and "PyTorch multi-tensor AdamATan2" in lines[0]

    build_adam_atan2(params, log=False)
    assert capsys.readouterr().out == ""
