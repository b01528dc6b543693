"""apply_fused_kernels (models/fused/) on TRM: the block family on its attention blocks, the MLP
families on its channel MLPs and on mlp_t (over the padded position axis), and the two mlp_t
layouts. Each computes what the plain model computes, holds the same parameters and state-dict
keys, and traces into one graph.

On the CPU the kernels are stand-ins, their PyTorch references (tests/fused_kernels.py).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import pretrain
from benchmarks.train_step import ARCHS, SHAPES, shape_metadata
from models.fused import FAMILIES, MLP_T_LAYOUTS, apply_fused_kernels, block, fused_kernels_in_use, mlp, mlp_t
from models.hrm.hrm_act_v1 import FUSED_KERNEL_CHOICES
from models.recursive_reasoning.trm import TinyRecursiveReasoningModel_ACTV1
from tests.fused_kernels import apply_on_cpu, one_training_call, same_heads as same_model_heads, use_reference_kernels
from tests.test_model_act import assert_training_calls_match, make_batch, training_calls
from tests.test_model_reference import relative_error
from utils.config import ConfigError, load_config
from utils.distributed import DistributedContext

# Small, with shapes the kernels take (hidden and head_dim multiples of 16); 20 + 2 positions, padded to
# 32 (mlp_t_padded) or, for the kernels, to 64.
CONFIG = dict(
    batch_size=3, seq_len=20, puzzle_emb_ndim=64, num_puzzle_identifiers=4, vocab_size=6, puzzle_emb_len=2,
    H_cycles=2, L_cycles=2, L_layers=2, hidden_size=64, expansion=2, num_heads=2,
    pos_encodings="rope", halt_max_steps=3, halt_exploration_prob=0.5, forward_dtype="float32",
)  # fmt: skip
MLP_T = dict(mlp_t=True, pos_encodings="none")


def same_heads(**overrides):
    """Two TRM loss heads with identical weights and a non-trivial Q head (halting depends on the
    computation); the first is the one to change."""
    config = {**CONFIG, **overrides}
    return (*same_model_heads(config, TinyRecursiveReasoningModel_ACTV1), make_batch(config))


def assert_training_calls_close(calls: list, reference_calls: list, tolerance: float = 1e-4) -> None:
    """`training_calls` of two heads agree to float32 rounding, each tensor by its relative error (the
    norm of the difference over the reference's norm): through TRM's recursion and the carried
    states, single elements of gradients drift further than assert_training_calls_match allows,
    while a wrong kernel, layout or wiring moves whole tensors by far more than the tolerance."""
    for (loss, outputs, halted, z_H, grads), reference in zip(calls, reference_calls, strict=True):
        assert torch.equal(halted, reference[2])
        pairs = [("loss", loss, reference[0]), ("z_H", z_H, reference[3])]
        pairs += [(key, outputs[key], reference[1][key]) for key in outputs]
        assert grads.keys() == reference[4].keys()
        pairs += [(name, grads[name], reference[4][name]) for name in grads]
        for name, value, expected in pairs:
            error = relative_error(value, expected)
            assert error <= tolerance, f"{name}: relative error {error:.3g}"


def state(head) -> tuple:
    """The state-dict keys (in order) and storage, and the parameters (as objects, in order) of a head."""
    return list(head.state_dict()), [tensor.data_ptr() for tensor in head.state_dict().values()], [id(p) for p in head.parameters()]


def test_attention_blocks_take_the_block_family_and_compute_the_same(monkeypatch):
    calls = use_reference_kernels(monkeypatch)
    fused, plain, batch = same_heads()
    before = state(fused)
    assert apply_on_cpu(fused, calls) == "reference block, reference MLP with gradient"
    assert isinstance(fused.model.inner.L_level, block.FusedReasoningModule)
    assert all(isinstance(layer.mlp, mlp.FusedSwiGLU) for layer in fused.model.inner.L_level.layers)
    assert state(fused) == before
    assert_training_calls_match(training_calls(fused.train(), batch), training_calls(plain.train(), batch))
    # Per call: H_cycles - 1 = 1 gradient-free recursion of L_cycles + 1 = 3 passes, 2 blocks each;
    # 3 passes with gradient, whose MLPs run the "mlp" kernels; 3 training calls.
    rows = 3 * 22
    assert calls["block"] == [torch.Size([rows, 64])] * (3 * 2 * 3)
    assert calls["mlp"] == [torch.Size([rows, 64])] * (3 * 2 * 3)


def test_mlp_t_blocks_take_the_mlp_families_over_padded_positions_and_compute_the_same(monkeypatch):
    calls = use_reference_kernels(monkeypatch)
    fused, plain, batch = same_heads(**MLP_T)
    before = state(fused)
    description = apply_on_cpu(fused, calls)
    assert description == ("mlp_t padded to 64 positions, reference mlp_t SwiGLU, reference mlp_t with gradient, "
                           "reference SwiGLU, reference MLP with gradient")
    assert not isinstance(fused.model.inner.L_level, block.FusedReasoningModule)  # no attention to fuse
    for layer in fused.model.inner.L_level.layers:
        assert isinstance(layer.mlp_t, mlp_t.PaddedSwiGLU) and layer.mlp_t.padded_size == 64
        assert type(layer.mlp) is mlp.FusedSwiGLU
    assert state(fused) == before
    assert_training_calls_close(training_calls(fused.train(), batch), training_calls(plain.train(), batch))
    # The kernels run on mlp_t's rows (batch x hidden, 64 positions wide) and on the channel MLP's
    # (batch x positions, hidden wide): 2 blocks x 3 passes each way, 3 calls.
    by_shape = {shape: calls["swiglu"].count(shape) for shape in set(calls["swiglu"])}
    assert by_shape == {torch.Size([3 * 64, 64]): 18, torch.Size([3 * 22, 64]): 18}
    by_shape = {shape: calls["mlp"].count(shape) for shape in set(calls["mlp"])}
    assert by_shape == {torch.Size([3 * 64, 64]): 18, torch.Size([3 * 22, 64]): 18}


@pytest.mark.parametrize("layout, description", [("mlp_t_padded", "mlp_t padded to 32 positions"), ("mlp_t_left", "mlp_t weights from the left")])
def test_mlp_t_layouts_run_anywhere_and_compute_the_same(layout, description):
    # No kernel is tried on the CPU; the layouts are PyTorch code and apply on any device.
    changed, plain, batch = same_heads(**MLP_T)
    before = state(changed)
    assert apply_fused_kernels(changed.model, torch.device("cpu"), [layout]) == description
    assert fused_kernels_in_use(plain.model) == "off"
    assert state(changed) == before
    assert_training_calls_match(training_calls(changed.train(), batch), training_calls(plain.train(), batch))
    # A checkpoint of either loads into the other.
    plain.load_state_dict(changed.state_dict())
    changed.load_state_dict(plain.state_dict())


def test_layouts_leave_attention_models_alone():
    head, _, _ = same_heads()
    before = state(head)
    assert apply_fused_kernels(head.model, torch.device("cpu"), ["mlp_t_padded", "mlp_t_left"]) == "off"
    assert state(head) == before and type(head.model.inner.L_level.layers[0]).__name__ == "TinyRecursiveReasoningModel_ACTV1Block"


def test_left_layout_with_the_kernel_families_keeps_pytorch_for_mlp_t(monkeypatch):
    calls = use_reference_kernels(monkeypatch)
    fused, plain, batch = same_heads(**MLP_T)
    assert apply_on_cpu(fused, calls, ("block", "swiglu", "mlp", "mlp_t_left")) == (
        "mlp_t weights from the left, reference SwiGLU, reference MLP with gradient")
    assert all(isinstance(layer, mlp_t.LeftMultipliedBlock) and type(layer.mlp) is mlp.FusedSwiGLU for layer in fused.model.inner.L_level.layers)
    assert_training_calls_close(training_calls(fused.train(), batch), training_calls(plain.train(), batch))
    assert set(calls["swiglu"]) == {torch.Size([3 * 22, 64])}


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_left_layout_mixes_positions_without_copies():
    # bfloat16, as on the GPU: the cast weights need no gradient, so each product of the mixing is one
    # batched product over the untransposed state with the weight broadcast: no copy of the state.
    head, _, _ = same_heads(**MLP_T, forward_dtype="bfloat16")
    layer = head.model.inner.L_level.layers[0]
    left = mlp_t.LeftMultipliedBlock(layer)
    hidden_states = torch.randn(3, 22, 64).bfloat16()
    with torch.no_grad():
        expected = layer(cos_sin=None, hidden_states=hidden_states)
    with torch.no_grad(), _Ops() as left_ops:
        out = left(cos_sin=None, hidden_states=hidden_states)
    mixing = left_ops.names[: left_ops.names.index("mm.default")]  # up to the channel MLP's product
    assert mixing.count("bmm.default") == 2 and not [name for name in mixing if name.startswith(("clone", "copy_", "contiguous"))]
    torch.testing.assert_close(out.float(), expected.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("families", [("mlp_t_left",), ("mlp_t_padded",), ("block", "swiglu", "mlp")], ids=lambda f: "+".join(f))
@pytest.mark.parametrize("overrides", [MLP_T, {}], ids=["mlp_t", "attention"])
def test_trm_with_levers_compiles_to_one_graph_and_computes_the_same(monkeypatch, families, overrides):
    # fullgraph: no graph break in a TRM training call with any lever ("aot_eager": traced, no codegen).
    calls = use_reference_kernels(monkeypatch)
    changed, plain, batch = same_heads(**overrides)
    apply_on_cpu(changed, calls, families)

    compiled_calls = one_training_call(changed, torch.compile(changed.train(), backend="aot_eager", fullgraph=True), batch)
    assert_training_calls_match(compiled_calls, one_training_call(plain, plain.train(), batch))


def pretrain_description(fused_kernels: str) -> str:
    """What pretrain.py's loss head for TRM's recipe at the tiny shape runs, given arch.fused_kernels."""
    shape = SHAPES["tiny"]
    config = load_config(["data_path=synthetic", f"global_batch_size={shape.batch}", "wandb.mode=disabled", *ARCHS["trm"],
                          f"arch.fused_kernels={fused_kernels}", "++arch.forward_dtype=float32"] + [f"++arch.{item}" for item in shape.arch])
    context = DistributedContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    return fused_kernels_in_use(pretrain.build_loss_head(config, shape_metadata(shape, 1), context).model)


def test_pretrain_applies_what_arch_fused_kernels_names(monkeypatch):
    assert FUSED_KERNEL_CHOICES == FAMILIES + MLP_T_LAYOUTS  # the config's list is the package's
    assert pretrain_description("[mlp_t_left]") == "mlp_t weights from the left"
    assert pretrain_description("true") == "off"  # no kernel on the CPU, and true applies no layout
    use_reference_kernels(monkeypatch)
    assert pretrain_description("true") == ("mlp_t padded to 128 positions, reference mlp_t SwiGLU, reference mlp_t with gradient, "
                                            "reference SwiGLU, reference MLP with gradient")
    assert pretrain_description("[mlp,mlp_t_left]") == "mlp_t weights from the left, reference MLP with gradient"
    assert pretrain_description("[]") == pretrain_description("false") == "off"
    with pytest.raises(ConfigError, match=r"arch.fused_kernels: unknown \['mlp_t_right'\]: give true \(every kernel family\), false, "
                                          "or a list of block, swiglu, mlp, mlp_t_padded, mlp_t_left"):
        pretrain_description("[mlp_t_right]")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("families", [("mlp_t_padded",), ("mlp_t_left",), FAMILIES], ids=lambda f: "+".join(f))
def test_levers_on_gpu_track_the_pytorch_path_in_bfloat16(families):
    if families == FAMILIES:
        pytest.importorskip("quack.gemm_interface")
    # TRM's Sudoku recipe at a smaller hidden size: 81 cells + 16 puzzle positions, mlp_t, no positions.
    shape = dict(MLP_T, batch_size=16, seq_len=81, puzzle_emb_len=16, hidden_size=128, puzzle_emb_ndim=128, L_cycles=3)
    changed, plain, batch = same_heads(**shape, forward_dtype="bfloat16")
    float32, _, _ = same_heads(**shape, forward_dtype="float32")
    description = apply_fused_kernels(changed.cuda().model, torch.device("cuda"), families)
    if families == FAMILIES:
        assert description.startswith("mlp_t padded to 128 positions, quack mlp_t SwiGLU, quack mlp_t with gradient"), description
    batch = {key: value.cuda() for key, value in batch.items()}
    results = []
    for head in (changed, plain.cuda(), float32.cuda()):
        torch.manual_seed(1)
        carry, loss, _, outputs, _ = torch.compile(head.train(), fullgraph=True)(carry=head.initial_carry(batch), batch=batch, return_keys=["logits"])
        loss.backward()
        results.append((loss.detach().float(), outputs["logits"].float(), carry.inner_carry.z_H.float()))
    (changed_loss, *changed_states), (plain_loss, *plain_states), (float32_loss, *float32_states) = results
    # The lever's bfloat16 run stays as close to the float32 model as PyTorch's own bfloat16 path does.
    for value, plain_value, reference in zip(changed_states, plain_states, float32_states):
        assert relative_error(value, reference) < 1.5 * relative_error(plain_value, reference)
    assert relative_error(changed_loss, float32_loss) < 3e-3
