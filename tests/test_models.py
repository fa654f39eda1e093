"""The DDPM UNet, the 2-D MLP and the presets: parameter counts, the time embedding, the blocks'
formulas, input validation, gradients and determinism."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddim_lib.models import MLP, PRESETS, UNet, build_model, timestep_embedding
from ddim_lib.models.presets import Preset
from ddim_lib.models.unet import AttnBlock, Downsample, Upsample, subpixel_kernels


def n_params(model):
    return sum(p.numel() for p in model.parameters())


pytestmark = pytest.mark.usefixtures("single_thread")  # see conftest.py


def tiny_unet(**kw):
    """A small UNet with every kind of block: two levels, attention at 4x4, dropout."""
    return UNet(**{"in_ch": 1, "ch": 32, "ch_mult": (1, 2), "num_res_blocks": 1, "attn_resolutions": (4,),
                   "dropout": 0.1, "resolution": 8, **kw})


# ---- parameter counts of the paper's models ------------------------------------------------------
@pytest.mark.parametrize("preset, reference", [("cifar10", 35_746_307), ("celeba", 78_700_803)])
def test_paper_models_have_the_reference_parameter_count(preset, reference):
    # References: the official DDIM/DDPM code and diffusers' UNet2DModel with the same configuration.
    # The issue allows 1%; the architecture follows the reference layer by layer, so the count is exact.
    with torch.device("meta"):
        model = build_model(preset)
    assert abs(n_params(model) - reference) <= 0.01 * reference
    assert n_params(model) == reference


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_maps_its_shape_to_itself(name):
    preset = PRESETS[name]
    assert isinstance(preset, Preset) and preset.name == name
    # The paper's models at a quarter of the width: same levels, resolutions and attention, 16x cheaper.
    model = build_model(name, **({"ch": 32} if preset.arch == "unet" else {})).eval()
    x = torch.randn(1, *preset.shape)
    with torch.no_grad():
        assert model(x, torch.tensor([999])).shape == x.shape
    assert preset.schedule == {"T": 1000, "beta_start": 1e-4, "beta_end": 0.02}


def test_presets_follow_the_issue():
    assert PRESETS["digits"].hflip is False          # digits are not mirror-symmetric
    assert PRESETS["cifar10"].hflip and PRESETS["celeba"].hflip
    for name in ("cifar10", "celeba"):
        p = PRESETS[name]
        assert (p.lr, p.ema_decay, p.grad_clip, p.batch_size) == (2e-4, 0.9999, 1.0, 128)
        assert p.model["dropout"] == 0.1 and p.model["attn_resolutions"] == (16,)
    assert 0.99 <= PRESETS["digits"].ema_decay < 0.9999 and 0.99 <= PRESETS["toy2d"].ema_decay < 0.9999
    with pytest.raises(AttributeError):
        PRESETS["digits"].lr = 1.0                   # frozen


def test_build_model_rejects_unknown_names():
    with pytest.raises(ValueError, match="cifar10, celeba, digits, toy2d"):
        build_model("imagenet")
    with pytest.raises(ValueError, match="unknown model option"):
        build_model("digits", channels=3)
    assert build_model("digits", ch=64).ch == 64


# ---- the time embedding ----------------------------------------------------------------------------
def test_time_embedding_matches_its_formula():
    t = torch.tensor([0, 1, 17, 500, 999])
    dim = 32
    half = dim // 2
    expected = torch.empty(len(t), dim, dtype=torch.float64)
    for b, tb in enumerate(t.tolist()):
        for i in range(half):
            w = 10000.0 ** (-i / (half - 1))
            expected[b, i], expected[b, half + i] = math.sin(tb * w), math.cos(tb * w)
    got = timestep_embedding(t, dim)
    assert got.dtype == torch.float32 and got.shape == (5, dim)
    # float32 rounding of the angle t * w (|angle| < 1000, ulp(1000) = 6.1e-5, plus w's relative
    # rounding 6e-8 times 1000) bounds the error by about 1.3e-4.
    torch.testing.assert_close(got.double(), expected, atol=2e-4, rtol=0)
    torch.testing.assert_close(got[0], torch.cat([torch.zeros(half), torch.ones(half)]))   # exact at t = 0


def test_time_embedding_odd_width_is_zero_padded():
    emb = timestep_embedding(torch.tensor([3, 7]), 9)
    assert emb.shape == (2, 9) and torch.equal(emb[:, -1], torch.zeros(2))
    torch.testing.assert_close(emb[:, :8], timestep_embedding(torch.tensor([3, 7]), 8))


# ---- the blocks ----------------------------------------------------------------------------------
def test_attention_is_softmax_of_scaled_dot_products():
    torch.manual_seed(0)
    block = AttnBlock(32).double()
    x = torch.randn(2, 32, 3, 4, dtype=torch.float64)
    h = block.norm(x)
    q, k, v = (m(h).flatten(2) for m in (block.q, block.k, block.v))            # (B, C, HW)
    weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)
    attended = torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape)
    torch.testing.assert_close(block(x), x + block.proj_out(attended), rtol=1e-12, atol=1e-12)


def test_downsampling_pads_right_and_bottom_only():
    # DDPM pads (0, 1, 0, 1) before a stride-2 3x3 conv: output (0, 0) sees input rows/cols 0..2.
    torch.manual_seed(0)
    down = Downsample(32).double()
    x = torch.randn(1, 32, 8, 8, dtype=torch.float64)
    y = down(x)
    assert y.shape == (1, 32, 4, 4)
    bumped = x.clone()
    bumped[..., 2, 2] += 1.0                       # inside the receptive field of output (0, 0) ...
    assert not torch.allclose(down(bumped)[..., 0, 0], y[..., 0, 0])
    symmetric = F.conv2d(bumped, down.conv.weight, down.conv.bias, stride=2, padding=1)
    torch.testing.assert_close(symmetric[..., 0, 0],   # ... but not of a symmetric-padding conv's
                               F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1)[..., 0, 0])


def test_upsampling_is_nearest_then_conv():
    torch.manual_seed(0)
    up = Upsample(32).double()
    x = torch.randn(1, 32, 2, 2, dtype=torch.float64)
    nearest = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(up(x), up.conv(nearest), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("shape", [(2, 5, 3, 7), (1, 4, 1, 1), (3, 6, 4, 4)])
def test_subpixel_upsampling_equals_interpolate_then_conv_with_gradients(shape):
    # The sub-pixel form (four 2x2 convs at the low resolution) is the same function of x and of the
    # 3x3 weights: outputs and all gradients agree in float64, on odd and one-pixel sizes too.
    torch.manual_seed(0)
    B, C, H, W = shape
    up = Upsample(C).double()
    x = torch.randn(B, C, H, W, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, C, 2 * H, 2 * W, dtype=torch.float64)
    grads = []
    for fn in (up, up.reference):
        up.zero_grad()
        x.grad = None
        y = fn(x)
        y.backward(g)
        grads.append((y.detach(), x.grad.clone(), up.conv.weight.grad.clone(), up.conv.bias.grad.clone()))
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


def test_subpixel_kernels_sum_the_taps_each_parity_sees():
    # Output row 2i sees input rows (i-1, i, i) through taps (w0, w1, w2); row 2i+1 sees (i, i, i+1).
    w = torch.arange(9, dtype=torch.float64).reshape(1, 1, 3, 3)     # w[i, j] = 3 i + j
    k = subpixel_kernels(w).reshape(2, 2, 2, 2)                      # (row parity, col parity, a, b)
    rows = {0: [[0], [1, 2]], 1: [[0, 1], [2]]}
    for py in (0, 1):
        for px in (0, 1):
            expected = [[sum(3 * i + j for i in rows[py][a] for j in rows[px][b]) for b in (0, 1)] for a in (0, 1)]
            assert k[py, px].tolist() == expected


def test_upsampling_keeps_channels_last_layout():
    torch.manual_seed(0)
    up = Upsample(8)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    y = up(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, up.reference(x.contiguous()), rtol=1e-5, atol=1e-5)


def test_attention_gradients_match_a_literal_conv_implementation():
    # The (B, HW, C) matrix-product form has the gradients of the literal 1x1-conv form.
    torch.manual_seed(0)
    block = AttnBlock(32).double()
    x = torch.randn(2, 32, 3, 4, dtype=torch.float64, requires_grad=True)

    def literal(x):
        h = block.norm(x)
        q, k, v = (m(h).flatten(2) for m in (block.q, block.k, block.v))
        weights = torch.softmax(torch.einsum("bci,bcj->bij", q, k) / math.sqrt(32), dim=-1)
        return x + block.proj_out(torch.einsum("bij,bcj->bci", weights, v).reshape(x.shape))

    grads = []
    for fn in (block, literal):
        block.zero_grad()
        x.grad = None
        (fn(x) ** 2).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in block.parameters()])
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-11, atol=1e-11)


# ---- the networks as eps-models --------------------------------------------------------------------
@pytest.mark.parametrize("model, shape", [
    (lambda: tiny_unet(), (3, 1, 8, 8)),
    (lambda: UNet(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16), (2, 3, 16, 16)),
    (lambda: MLP(hidden=32, depth=2), (5, 2)),
])
def test_output_shape_equals_input_shape(model, shape):
    torch.manual_seed(0)
    net = model()
    x = torch.randn(*shape)
    out = net(x, torch.randint(0, 1000, (shape[0],)))
    assert out.shape == x.shape and out.dtype == x.dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("make", [tiny_unet, lambda: MLP(hidden=32)])
def test_timesteps_must_be_a_long_vector_of_batch_size(make):
    net = make().eval()
    x = torch.randn(2, 1, 8, 8) if isinstance(net, UNet) else torch.randn(2, 2)
    for bad in (torch.tensor([1.0, 2.0]), torch.tensor([[1], [2]]), torch.tensor([1, 2, 3]), 5, [1, 2],
                torch.tensor(3)):
        with pytest.raises(ValueError, match="t must"):
            net(x, bad)
    net(x, torch.tensor([1, 2]))                    # the right form works


def test_mlp_rejects_wrong_data_shape():
    with pytest.raises(ValueError, match=r"\(B, 2\)"):
        MLP()(torch.randn(3, 3), torch.zeros(3, dtype=torch.long))


def test_the_output_depends_on_t():
    torch.manual_seed(0)
    net = tiny_unet().eval()
    x = torch.randn(1, 1, 8, 8).expand(2, -1, -1, -1)
    out = net(x, torch.tensor([10, 900]))
    assert not torch.allclose(out[0], out[1], atol=1e-4)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = tiny_unet(dropout=0.0)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,))
    net(x, t).square().mean().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        if name.endswith(".k.bias"):
            # softmax is invariant to adding q_i . b_k to every score of row i: this bias provably
            # gets no gradient (in DDPM's attention too); float32 leaves round-off only.
            assert p.grad.abs().max() < 1e-6 * max(1.0, net.conv_in.weight.grad.abs().max().item()), name
        else:
            assert p.grad.abs().max() > 0, name


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    torch.manual_seed(0)
    net = tiny_unet(dropout=0.5)
    x, t = torch.randn(4, 1, 8, 8), torch.randint(0, 1000, (4,))
    net.eval()
    assert torch.equal(net(x, t), net(x, t))
    net.train()
    torch.manual_seed(1)
    a = net(x, t)
    torch.manual_seed(1)
    assert torch.equal(a, net(x, t))                # dropout masks come from the seeded global RNG
    assert not torch.equal(a, net(x, t))


def test_float64_models_work():
    torch.manual_seed(0)
    net = tiny_unet().double().eval()
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    assert net(x, torch.tensor([0, 999])).dtype == torch.float64


def test_unet_rejects_inconsistent_sizes():
    with pytest.raises(ValueError, match="divisible"):
        UNet(ch=32, ch_mult=(1, 2, 2, 2), resolution=12)
    with pytest.raises(ValueError, match="GroupNorm"):
        UNet(ch=48)


@pytest.mark.parametrize("preset, overrides, match", [
    ("toy2d", {"hidden": "wide"}, "hidden"), ("toy2d", {"depth": -1}, "depth"), ("digits", {"ch_mult": 3}, "ch_mult"),
    ("digits", {"ch": [1]}, "ch"), ("toy2d", {"colour": 1}, "unknown model option"),
])
def test_malformed_model_options_raise_one_line_value_error(preset, overrides, match):
    from ddim_lib.models import build_model as build
    with pytest.raises(ValueError, match=match) as info:
        build(preset, **overrides)
    assert "\n" not in str(info.value)
