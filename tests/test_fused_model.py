"""apply_fused_kernels (models/fused/) on a whole model: the core model knows nothing of it; on the
CPU it changes nothing; where kernels pass their check it swaps in modules that hold the same
parameters, so state dicts and optimisers see no difference; pretrain.py and the benchmark reach it
through arch.fused_kernels and the variant names.

On the CPU the kernels are stand-ins, their PyTorch references (tests/fused_kernels.py). On a GPU
with `quack-kernels` the real kernels run in bfloat16, compiled, as training runs them.
"""

import ast
import os
import subprocess
import sys
import warnings

import pytest
import torch

import pretrain
from benchmarks.train_step import SHAPES, main, parse_variant, shape_metadata
from models.fused import FAMILIES, apply_fused_kernels, block, fused_kernels_in_use, mlp
from tests.fused_kernels import CONFIG, apply_on_cpu, one_training_call, same_heads, use_reference_kernels
from tests.test_model_act import SMALL, assert_training_calls_match, make_batch, training_calls
from utils.config import load_config
from utils.distributed import DistributedContext

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE_MODULES = ["models.hrm.hrm_act_v1", "models.recursive_reasoning.trm", "models.recurrent_inner", "models.act", "models.layers", "models.attention", "models.kernel_choice", "models.losses",
                "models.common", "models.sparse_embedding"]


def test_the_core_model_imports_nothing_of_the_fused_package():
    code = (f"import sys; import {', '.join(CORE_MODULES)}; "
            "print(sorted(name for name in sys.modules if name.startswith(('models.fused', 'quack', 'flash_attn'))))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    # Nor inside a function, where importing the modules would not show it.
    for module in CORE_MODULES:
        path = os.path.join(REPO_ROOT, *module.split(".")) + ".py"
        imported = [node.module for node in ast.walk(ast.parse(open(path).read())) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(ast.parse(open(path).read())) if isinstance(node, ast.Import) for alias in node.names]
        assert not [name for name in imported if name and name.startswith("models.fused")], module


def state(head) -> tuple:
    """The state-dict keys and the parameters (as objects, in order) of a head."""
    return list(head.state_dict()), [id(parameter) for parameter in head.parameters()]


def assert_same_training_calls(calls: list, reference_calls: list) -> None:
    for (loss, outputs, halted, z_H, grads), reference in zip(calls, reference_calls, strict=True):
        assert torch.equal(loss, reference[0]) and torch.equal(halted, reference[2]) and torch.equal(z_H, reference[3])
        assert outputs.keys() == reference[1].keys() and all(torch.equal(outputs[key], reference[1][key]) for key in outputs)
        assert grads.keys() == reference[4].keys() and all(torch.equal(grads[name], reference[4][name]) for name in grads)


@pytest.mark.parametrize("kernels_registered", [False, True], ids=["quack only", "stand-ins registered"])
def test_on_the_cpu_nothing_is_swapped_and_the_model_computes_exactly_the_same(monkeypatch, kernels_registered):
    if kernels_registered:
        # Even with kernels that would pass, none is tried off CUDA half precision.
        use_reference_kernels(monkeypatch, anywhere=False)
    head, plain = same_heads(SMALL)
    before = state(head)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert apply_fused_kernels(head.model, torch.device("cpu")) == "off"
    assert state(head) == before
    assert not any(isinstance(module, (block.FusedReasoningModule, mlp.FusedSwiGLU)) for module in head.modules())
    batch = make_batch(SMALL)
    assert_same_training_calls(training_calls(head.train(), batch), training_calls(plain.train(), batch))


def test_swapped_modules_hold_the_same_parameters_and_state_dict(monkeypatch):
    calls = use_reference_kernels(monkeypatch)
    head, plain = same_heads(CONFIG)
    before, storage = state(head), {name: tensor.data_ptr() for name, tensor in head.state_dict().items()}
    assert apply_on_cpu(head, calls) == "reference block, reference MLP with gradient"
    assert fused_kernels_in_use(head.model) == "reference block, reference MLP with gradient" and fused_kernels_in_use(plain.model) == "off"
    assert isinstance(head.model.inner.H_level, block.FusedReasoningModule) and isinstance(head.model.inner.L_level, block.FusedReasoningModule)
    assert all(isinstance(layer.mlp, mlp.FusedSwiGLU) for layer in [*head.model.inner.H_level.layers, *head.model.inner.L_level.layers])
    assert state(head) == before
    assert {name: tensor.data_ptr() for name, tensor in head.state_dict().items()} == storage
    # A checkpoint of either loads into the other.
    plain.load_state_dict(head.state_dict())
    head.load_state_dict(plain.state_dict())


def test_families_are_applied_as_asked_and_unknown_ones_are_refused(monkeypatch):
    calls = use_reference_kernels(monkeypatch)
    expected = {(): "off", ("block",): "reference block", ("swiglu",): "reference SwiGLU", ("mlp",): "reference MLP with gradient",
                ("block", "swiglu"): "reference block", ("swiglu", "mlp"): "reference SwiGLU, reference MLP with gradient",
                FAMILIES: "reference block, reference MLP with gradient"}
    for families, description in expected.items():
        head, _ = same_heads(CONFIG)
        assert apply_on_cpu(head, calls, families) == description, families
    with pytest.raises(ValueError, match="unknown fused kernel families \\['fused'\\]; choose from block, swiglu, mlp"):
        apply_fused_kernels(head.model, torch.device("cpu"), ["fused"])


def test_a_family_whose_kernels_fail_leaves_its_place_to_the_next(monkeypatch):
    calls = use_reference_kernels(monkeypatch)

    def broken_block_kernels():
        return block.REFERENCE._replace(residual_rms=lambda *args: (args[2], args[3]))

    monkeypatch.setattr(block, "BLOCK_KERNELS", {"broken": broken_block_kernels})
    head, _ = same_heads(CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert apply_on_cpu(head, calls) == "reference SwiGLU, reference MLP with gradient"
    assert [str(warning.message).split(" (")[0] for warning in caught] == ["Fused block kernels 'broken' skipped on cpu"]


def test_the_fused_model_compiles_to_one_graph_and_computes_the_same(monkeypatch):
    # fullgraph: the custom ops, the autograd function and the swapped modules trace without a break.
    calls = use_reference_kernels(monkeypatch)
    config = {**CONFIG, "H_layers": 1, "L_layers": 1}
    fused, plain = same_heads(config)
    apply_on_cpu(fused, calls)
    batch = make_batch(config)

    compiled_calls = one_training_call(fused, torch.compile(fused.train(), backend="aot_eager", fullgraph=True), batch)
    assert len(calls["block"]) == 3 + 1 + 4 + 2 and len(calls["mlp"]) == 2
    assert_training_calls_match(compiled_calls, one_training_call(plain, plain.train(), batch))


def build_tiny_loss_head(fused_kernels: bool):
    shape = SHAPES["tiny"]
    config = load_config(["data_path=synthetic", f"global_batch_size={shape.batch}", "wandb.mode=disabled",
                          f"arch.fused_kernels={str(fused_kernels).lower()}", "++arch.forward_dtype=float32"]
                         + [f"++arch.{item}" for item in shape.arch])
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return pretrain.build_loss_head(config, shape_metadata(shape, 1), context)


def test_pretrain_applies_the_fused_kernels_where_the_arch_config_asks(monkeypatch):
    assert fused_kernels_in_use(build_tiny_loss_head(fused_kernels=True).model) == "off"  # the CPU: no kernel
    use_reference_kernels(monkeypatch)
    assert fused_kernels_in_use(build_tiny_loss_head(fused_kernels=True).model) == "reference block, reference MLP with gradient"
    assert fused_kernels_in_use(build_tiny_loss_head(fused_kernels=False).model) == "off"


def test_benchmark_variants_apply_their_families(monkeypatch):
    assert [parse_variant(name).fused_families for name in ("fused", "fused-block", "fused-swiglu", "unfused", "eager")] == [
        FAMILIES, ("block", "swiglu"), ("swiglu",), (), None]
    use_reference_kernels(monkeypatch)
    records = main(["--shape", "tiny", "--steps", "1", "--warmup", "1", "--compare", "eager+fused,eager+fused-block,eager+fused-swiglu",
                    "--override", "arch.fused_kernels=true"])
    assert [record.get("error") for record in records] == [None] * 3
    # The variant, not arch.fused_kernels, decides.
    assert [record["fused_kernel"] for record in records] == ["reference block, reference MLP with gradient", "reference block", "reference SwiGLU"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_kernels_on_gpu_track_the_pytorch_path_in_bfloat16():
    pytest.importorskip("quack.gemm_interface")
    pytest.importorskip("quack.epilogue.frontend")
    config = {**CONFIG, "forward_dtype": "bfloat16", "batch_size": 16, "seq_len": 81, "hidden_size": 128, "num_heads": 2, "puzzle_emb_ndim": 128}
    fused, plain = same_heads(config)
    fused, plain = fused.cuda().train(), plain.cuda().train()
    description = apply_fused_kernels(fused.model, torch.device("cuda"))
    assert description == "quack block, quack MLP with gradient", "the fused kernels failed their check on this GPU"
    batch = {key: value.cuda() for key, value in make_batch(config).items()}
    compiled_fused, compiled_plain = torch.compile(fused, fullgraph=True), torch.compile(plain, fullgraph=True)
    torch.manual_seed(1)
    carry_fused, loss_fused, _, outputs_fused, _ = compiled_fused(carry=fused.initial_carry(batch), batch=batch, return_keys=["logits"])
    torch.manual_seed(1)
    carry_plain, loss_plain, _, outputs_plain, _ = compiled_plain(carry=plain.initial_carry(batch), batch=batch, return_keys=["logits"])
    logits_error = (outputs_fused["logits"].float() - outputs_plain["logits"].float()).norm() / outputs_plain["logits"].float().norm()
    state_error = (carry_fused.inner_carry.z_H.float() - carry_plain.inner_carry.z_H.float()).norm() / carry_plain.inner_carry.z_H.float().norm()
    assert logits_error < 3e-2 and state_error < 3e-2, (logits_error.item(), state_error.item())
    assert abs(loss_fused.item() - loss_plain.item()) / abs(loss_plain.item()) < 3e-2
