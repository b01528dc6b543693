"""What the fused-kernel tests share: a plain/fused pair of models and stand-in kernels for the CPU.

The real kernels (quack's) need a CUDA GPU. On the CPU each family gets one stand-in candidate,
"reference": the PyTorch reference of what the kernels compute, so that apply_fused_kernels swaps
the fused modules in and the tests check the swapping, the algebra of the fused paths and their
wiring against the plain model.
"""

import torch

import models.fused as fused
from models import kernel_choice
from models.fused import block, mlp
from models.hrm.hrm_act_v1 import HierarchicalReasoningModel_ACTV1
from models.losses import ACTLossHead

# Small, with shapes the kernels take (hidden and head_dim multiples of 16).
CONFIG = dict(
    batch_size=3, seq_len=20, puzzle_emb_ndim=64, num_puzzle_identifiers=4, vocab_size=6,
    H_cycles=2, L_cycles=2, H_layers=2, L_layers=2, hidden_size=64, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
)  # fmt: skip


def same_heads(config: dict, model_class=HierarchicalReasoningModel_ACTV1):
    """Two loss heads with identical weights, their Q heads non-trivial so that halting decisions
    depend on the computation; the first is the one to apply fused kernels to."""
    torch.manual_seed(0)
    first = ACTLossHead(model_class(config), "stablemax_cross_entropy")
    second = ACTLossHead(model_class(config), "stablemax_cross_entropy")
    second.load_state_dict(first.state_dict())
    with torch.no_grad():
        for head in (first, second):
            head.model.inner.q_head.weight.copy_(torch.linspace(-0.5, 0.5, head.model.inner.q_head.weight.numel()).view(2, -1))
    return first, second


def one_training_call(head: ACTLossHead, step_fn, batch: dict) -> list:
    """One training call of `step_fn` (the head, or it compiled) from a fresh carry, with its backward:
    [(loss, outputs, halted, z_H, gradients)], as test_model_act.assert_training_calls_match reads."""
    torch.manual_seed(1)
    carry, loss, _, outputs, _ = step_fn(carry=head.initial_carry(batch), batch=batch, return_keys=["logits", "q_halt_logits"])
    loss.backward()
    grads = {name: parameter.grad for name, parameter in head.named_parameters() if parameter.grad is not None}
    return [(loss.detach(), outputs, carry.halted, carry.inner_carry.z_H, grads)]


def _counting(calls: list, function):
    def counted(*args):
        calls.append(args[0].shape)
        return function(*args)

    return counted


def use_reference_kernels(monkeypatch, anywhere: bool = True) -> dict:
    """Make "reference" every family's only candidate, counting the calls of one kernel of each
    (the shape of its first argument per call, by family), and start from an empty choice cache.
    With `anywhere`, kernels are tried on the CPU and in float32 too, not only on CUDA in half precision."""
    calls = {family: [] for family in fused.FAMILIES}
    block_kernels = block.REFERENCE._replace(rope_qkv=_counting(calls["block"], block.rope_qkv_reference))
    mlp_kernels = mlp.REFERENCE._replace(swiglu_with_product=_counting(calls["mlp"], mlp.swiglu_with_product_reference))
    swiglu_kernel = _counting(calls["swiglu"], mlp.swiglu_reference)
    monkeypatch.setattr(block, "BLOCK_KERNELS", {"reference": lambda: block_kernels})
    monkeypatch.setattr(mlp, "MLP_KERNELS", {"reference": lambda: mlp_kernels})
    monkeypatch.setattr(mlp, "SWIGLU_KERNELS", {"reference": lambda: swiglu_kernel})
    monkeypatch.setattr(kernel_choice, "_choices", {})
    if anywhere:
        monkeypatch.setattr(fused, "KERNEL_DEVICE_TYPES", ("cpu", "cuda"))
        monkeypatch.setattr(fused, "KERNEL_DTYPES", (torch.float32, torch.float16, torch.bfloat16))
    return calls


def apply_on_cpu(head: ACTLossHead, calls: dict, families=fused.FAMILIES) -> str:
    """apply_fused_kernels on the CPU; the calls its checks made are then forgotten."""
    description = fused.apply_fused_kernels(head.model, torch.device("cpu"), families)
    for family_calls in calls.values():
        family_calls.clear()
    return description
