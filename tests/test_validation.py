"""Bad input at the library's boundary: every public function refuses it with one ValueError that
names the argument (issue 14, item 5), checked once per call, never per step of a sampler loop.

Each case is (class, id, call, message): ``call(dl)`` takes the ``ddim_lib`` module and must raise
a ValueError matching ``message``. ``python tests/test_validation.py`` counts, per class, the cases
handled cleanly (a ValueError, no other exception, no silent result) by whichever ``ddim_lib`` is
importable, so the same cases can be run on an older checkout (PYTHONPATH=<checkout>); classes
marked "new API" use arguments that older versions lack.
"""
from __future__ import annotations

import sys
from collections import Counter

import torch

NAN, INF = float("nan"), float("inf")


def _sched(dl, T: int = 50):
    return dl.NoiseSchedule.linear(T, beta_start=1e-3, beta_end=0.25)


def _mix(dl):
    return dl.GaussianMixture([[-1.0, 0.0], [1.0, 0.5]], [0.3, 0.4])


def _oracle(dl):
    return dl.OracleEps(_mix(dl), _sched(dl))


def _x(value=None, shape=(4, 2), dtype=torch.float64):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    if value is not None:
        x[1, 0] = value
    return x


def _nan_model(dl, when=lambda t: True):
    oracle = _oracle(dl)

    def model(x, t):
        out = oracle(x, t)
        return out * NAN if when(int(t[0])) else out
    return model


def _shape_model(shape_of):
    def model(x, t):
        return torch.zeros(shape_of(x), dtype=x.dtype)
    return model


def _ztsnr(dl):
    return _sched(dl).rescale_zero_terminal_snr()


# (class, id, call(dl), message regex)
CASES = [
    # ---- non-finite inputs ----------------------------------------------------------------------------
    ("non-finite inputs", "sample x_T NaN", lambda dl: dl.sample(_oracle(dl), _x(NAN), _sched(dl), 10), "x_T must be finite"),
    ("non-finite inputs", "sample x_T inf", lambda dl: dl.sample(_oracle(dl), _x(INF), _sched(dl), 10), "x_T must be finite"),
    ("non-finite inputs", "ddpm_sample x_T NaN", lambda dl: dl.ddpm_sample(_oracle(dl), _x(NAN), _sched(dl)), "x_T must be finite"),
    ("non-finite inputs", "encode x_0 NaN", lambda dl: dl.encode(_oracle(dl), _x(NAN), _sched(dl), 10), "x_0 must be finite"),
    ("non-finite inputs", "encode x_0 -inf", lambda dl: dl.encode(_oracle(dl), _x(-INF), _sched(dl), 10), "x_0 must be finite"),
    ("non-finite inputs", "ode_sample x_T NaN", lambda dl: dl.ode_sample(_oracle(dl), _x(NAN), _sched(dl), 10), "x_T must be finite"),
    ("non-finite inputs", "heun_sample x_T inf", lambda dl: dl.heun_sample(_oracle(dl), _x(INF), _sched(dl), 10), "x_T must be finite"),
    ("non-finite inputs", "mixture means NaN", lambda dl: dl.GaussianMixture([[0.0, NAN]], [0.3]), "means must be finite"),
    ("non-finite inputs", "mixture means inf", lambda dl: dl.GaussianMixture([[0.0], [INF]], [0.3, 0.3]), "means must be finite"),
    ("non-finite inputs", "mixture stds inf", lambda dl: dl.GaussianMixture([[0.0], [1.0]], [0.3, INF]), "stds must be finite"),
    ("non-finite inputs", "mixture weights NaN", lambda dl: dl.GaussianMixture([[0.0], [1.0]], [0.3, 0.3], [NAN, 0.5]), "weights must be"),
    ("non-finite inputs", "q_sample x0 NaN", lambda dl: dl.q_sample(_x(NAN), _sched(dl), 10), "x0 must be finite"),
    ("non-finite inputs", "q_sample noise inf", lambda dl: dl.q_sample(_x(), _sched(dl), 10, noise=_x(INF)), "noise must be finite"),
    ("non-finite inputs", "q_mean_var x0 inf", lambda dl: dl.q_mean_var(_x(INF), _sched(dl), 10), "x0 must be finite"),
    ("non-finite inputs", "ddpm_posterior x_t NaN", lambda dl: dl.ddpm_posterior(_x(), _x(NAN), _sched(dl), 10), "x_t must be finite"),
    ("non-finite inputs", "slerp z0 NaN", lambda dl: dl.slerp(_x(NAN), _x(), 0.5), "must be finite"),
    ("non-finite inputs", "slerp lam NaN", lambda dl: dl.slerp(_x(), -_x() + 1, NAN), "lam must be a finite"),
    # ---- the model's output shape ---------------------------------------------------------------------
    ("model output shape", "sample: (B, 1) for (B, 2)",
     lambda dl: dl.sample(_shape_model(lambda x: (x.shape[0], 1)), _x(), _sched(dl), 10), r"returned shape \(4, 1\)"),
    ("model output shape", "sample: (1, 2) broadcast over the batch",
     lambda dl: dl.sample(_shape_model(lambda x: (1, 2)), _x(), _sched(dl), 10), r"returned shape \(1, 2\)"),
    ("model output shape", "sample: (B,) for (B, 2)",
     lambda dl: dl.sample(_shape_model(lambda x: (x.shape[0],)), _x(), _sched(dl), 10, return_trajectory=True), "returned shape"),
    ("model output shape", "sample: (B, 2, 1) for (B, 2)",
     lambda dl: dl.sample(_shape_model(lambda x: (x.shape[0], 2, 1)), _x(), _sched(dl), 10), "returned shape"),
    ("model output shape", "encode: (B, 1)",
     lambda dl: dl.encode(_shape_model(lambda x: (x.shape[0], 1)), _x(), _sched(dl), 10), "returned shape"),
    ("model output shape", "ddpm_sample: (1, 2)",
     lambda dl: dl.ddpm_sample(_shape_model(lambda x: (1, 2)), _x(), _sched(dl)), "returned shape"),
    ("model output shape", "ode_sample: (B, 1)",
     lambda dl: dl.ode_sample(_shape_model(lambda x: (x.shape[0], 1)), _x(), _sched(dl), 10), "returned shape"),
    ("model output shape", "heun_sample: (1, 2)",
     lambda dl: dl.heun_sample(_shape_model(lambda x: (1, 2)), _x(), _sched(dl), 10), "returned shape"),
    ("model output shape", "sample: a numpy array",
     lambda dl: dl.sample(lambda x, t: x.numpy() * 0, _x(), _sched(dl), 10), "not a tensor"),
    ("model output shape", "OracleEps given x of another dimension",
     lambda dl: _oracle(dl)(_x(shape=(4, 3)), torch.zeros(4, dtype=torch.long)), "mixture has dimension 2"),
    # ---- non-finite model output ----------------------------------------------------------------------
    ("non-finite model output", "sample, NaN model",
     lambda dl: dl.sample(_nan_model(dl), _x(), _sched(dl), 10), r"the model _nan_model\.<locals>\.model returned non-finite"),
    ("non-finite model output", "sample, NaN at one step only",
     lambda dl: dl.sample(_nan_model(dl, lambda t: t < 10), _x(), _sched(dl), 10), "returned non-finite"),
    ("non-finite model output", "sample eta = 1, NaN model",
     lambda dl: dl.sample(_nan_model(dl), _x(), _sched(dl), 10, eta=1.0), "returned non-finite"),
    ("non-finite model output", "sample with trajectory, NaN model",
     lambda dl: dl.sample(_nan_model(dl), _x(), _sched(dl), 10, return_trajectory=True), "returned non-finite"),
    ("non-finite model output", "sample, inf model",
     lambda dl: dl.sample(lambda x, t: torch.full_like(x, INF), _x(), _sched(dl), 10), "returned non-finite"),
    ("non-finite model output", "encode, NaN model",
     lambda dl: dl.encode(_nan_model(dl), _x(), _sched(dl), 10), "encode: .*returned non-finite"),
    ("non-finite model output", "ddpm_sample, NaN model",
     lambda dl: dl.ddpm_sample(_nan_model(dl), _x(), _sched(dl)), "ddpm_sample: .*returned non-finite"),
    ("non-finite model output", "ode_sample, NaN model",
     lambda dl: dl.ode_sample(_nan_model(dl), _x(), _sched(dl), 10), "ode_sample: .*returned non-finite"),
    ("non-finite model output", "heun_sample, NaN at one step",
     lambda dl: dl.heun_sample(_nan_model(dl, lambda t: t == 5), _x(), _sched(dl), 10), "returned non-finite"),
    # ---- integer (and other non-float) dtypes ----------------------------------------------------------
    ("non-float dtypes", "encode integer x_0",
     lambda dl: dl.encode(_oracle(dl), torch.ones(4, 2, dtype=torch.long), _sched(dl), 10), "x_0 must be a floating-point"),
    ("non-float dtypes", "sample integer x_T",
     lambda dl: dl.sample(_oracle(dl), torch.ones(4, 2, dtype=torch.int32), _sched(dl), 10), "x_T must be a floating-point"),
    ("non-float dtypes", "ddpm_sample integer x_T",
     lambda dl: dl.ddpm_sample(_oracle(dl), torch.ones(4, 2, dtype=torch.long), _sched(dl)), "x_T must be a floating-point"),
    ("non-float dtypes", "ode_sample bool x_T",
     lambda dl: dl.ode_sample(_oracle(dl), torch.ones(4, 2, dtype=torch.bool), _sched(dl), 10), "x_T must be a floating-point"),
    ("non-float dtypes", "NoiseSchedule.linear(dtype=int64)",
     lambda dl: dl.NoiseSchedule.linear(100, dtype=torch.int64), "dtype must be a floating-point"),
    ("non-float dtypes", "NoiseSchedule.cosine(dtype=int32)",
     lambda dl: dl.NoiseSchedule.cosine(100, dtype=torch.int32), "dtype must be a floating-point"),
    ("non-float dtypes", "NoiseSchedule(betas, dtype=int64)",
     lambda dl: dl.NoiseSchedule(torch.full((10,), 0.01), dtype=torch.int64), "dtype must be a floating-point"),
    ("non-float dtypes", "q_sample integer x0",
     lambda dl: dl.q_sample(torch.ones(4, 2, dtype=torch.long), _sched(dl), 10), "x0 must be a floating-point"),
    ("non-float dtypes", "ddim_step integer x_t",
     lambda dl: dl.ddim_step(torch.ones(4, 2, dtype=torch.long), _x(), 0.5, 0.6, 0.0), "x_t must be a floating-point"),
    ("non-float dtypes", "predict_x0 integer eps",
     lambda dl: dl.predict_x0(_x(), torch.ones(4, 2, dtype=torch.long), 0.5), "eps must be a floating-point"),
    ("non-float dtypes", "slerp integer latents",
     lambda dl: dl.slerp(torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2, dtype=torch.long), 0.5), "floating-point"),
    ("non-float dtypes", "GaussianMixture(dtype=int64)",
     lambda dl: dl.GaussianMixture([[0.0], [1.0]], [0.5, 0.5], dtype=torch.int64), "dtype must be a floating-point"),
    # ---- alpha-bar ranges ------------------------------------------------------------------------------
    ("alpha-bar range", "ddim_step a_t = 0", lambda dl: dl.ddim_step(_x(), _x(), 0.0, 0.5, 0.0), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "ddim_step a_t = 1.5", lambda dl: dl.ddim_step(_x(), _x(), 1.5, 0.5, 0.0), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "ddim_step a_t = -0.2", lambda dl: dl.ddim_step(_x(), _x(), -0.2, 0.5, 0.0), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "ddim_step a_t = NaN", lambda dl: dl.ddim_step(_x(), _x(), NAN, 0.5, 0.0), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "ddim_step a_prev = 1.5", lambda dl: dl.ddim_step(_x(), _x(), 0.5, 1.5, 0.0), r"a_prev must lie in \[0, 1\]"),
    ("alpha-bar range", "ddim_step a_prev = -0.1", lambda dl: dl.ddim_step(_x(), _x(), 0.5, -0.1, 0.0), r"a_prev must lie in \[0, 1\]"),
    ("alpha-bar range", "ddim_step per-sample a_t with a 0",
     lambda dl: dl.ddim_step(_x(), _x(), torch.tensor([0.5, 0.0, 0.5, 0.5]), 0.6, 0.0), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "predict_x0 a_t = 0", lambda dl: dl.predict_x0(_x(), _x(), 0.0), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "predict_x0 a_t = 1.5", lambda dl: dl.predict_x0(_x(), _x(), 1.5), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "predict_x0 a_t = -1", lambda dl: dl.predict_x0(_x(), _x(), -1.0), r"a_t must lie in \(0, 1\]"),
    ("alpha-bar range", "predict_eps a_t = 1", lambda dl: dl.predict_eps(_x(), _x(), 1.0), r"a_t must lie in \[0, 1\)"),
    ("alpha-bar range", "predict_eps a_t = 1.5", lambda dl: dl.predict_eps(_x(), _x(), 1.5), r"a_t must lie in \[0, 1\)"),
    ("alpha-bar range", "GaussianMixture.noised(1.5)", lambda dl: _mix(dl).noised(1.5), r"alpha_bar must be a number in \[0, 1\]"),
    # ---- slerp -----------------------------------------------------------------------------------------
    ("slerp", "opposite latents", lambda dl: dl.slerp(_x(), -_x(), 0.5), "opposite"),
    ("slerp", "opposite in one row of a batch",
     lambda dl: dl.slerp(_x(), torch.cat([_x()[:2], -_x()[2:3], _x()[3:]]), 0.3), r"z0\[2\] and z1\[2\] are opposite"),
    ("slerp", "opposite, scaled", lambda dl: dl.slerp(_x(), -3 * _x(), 0.25), "opposite"),
    ("slerp", "zero z0", lambda dl: dl.slerp(torch.zeros(4, 2, dtype=torch.float64), _x(), 0.5), "non-zero latents"),
    ("slerp", "zero z1 in one row", lambda dl: dl.slerp(_x(), _x() * torch.tensor([[1.0], [0.0], [1.0], [1.0]], dtype=torch.float64), 0.5),
     "non-zero latents"),
    ("slerp", "1-D latents", lambda dl: dl.slerp(_x()[0], _x()[1], 0.5), r"must be batched, of shape \(B, \.\.\.\)"),
    ("slerp", "0-d latents", lambda dl: dl.slerp(torch.tensor(1.0), torch.tensor(2.0), 0.5), "must be batched"),
    ("slerp", "lam a string", lambda dl: dl.slerp(_x(), _x(), "half"), "lam must be a finite real scalar"),
    # ---- shapes of the step formulas (broadcasting once hid a wrong shape) ------------------------------
    ("step shapes", "ddim_step eps (1, 2) for x_t (4, 2)",
     lambda dl: dl.ddim_step(_x(), _x()[:1], 0.5, 0.6, 0.0), r"eps has shape \(1, 2\) but x_t has \(4, 2\)"),
    ("step shapes", "ddim_step noise (4, 1)",
     lambda dl: dl.ddim_step(_x(), _x(), 0.5, 0.6, 0.1, noise=_x()[:, :1]), "noise has shape"),
    ("step shapes", "predict_x0 eps (4, 1)", lambda dl: dl.predict_x0(_x(), _x()[:, :1], 0.5), "eps has shape"),
    ("step shapes", "predict_eps x0 (2,)", lambda dl: dl.predict_eps(_x(), _x()[0], 0.5), "x0 has shape"),
    ("step shapes", "euler_step_sigma eps (1, 2)",
     lambda dl: dl.euler_step_sigma(_x(), _x()[:1], 1.0, 0.5), "eps has shape"),
    ("step shapes", "ddpm_posterior x_t (1, 2)",
     lambda dl: dl.ddpm_posterior(_x(), _x()[:1], _sched(dl), 10), "x_t has shape"),
    # ---- new API: prediction types and zero terminal SNR (absent before) ---------------------------------
    ("new API: prediction / zero SNR", "sample eps model at abar_T = 0",
     lambda dl: dl.sample(_oracle(dl), _x(), _ztsnr(dl), dl.timesteps(50, 10, "trailing")), "'eps' prediction cannot give x_0"),
    ("new API: prediction / zero SNR", "ddpm_sample eps model at abar_T = 0",
     lambda dl: dl.ddpm_sample(_oracle(dl), _x(), _ztsnr(dl)), "alpha_bar = 0"),
    ("new API: prediction / zero SNR", "ode_sample from abar = 0",
     lambda dl: dl.ode_sample(_oracle(dl), _x(), _ztsnr(dl), dl.timesteps(50, 10, "trailing")), "alpha_bar = 0"),
    ("new API: prediction / zero SNR", "sample prediction='epsilon'",
     lambda dl: dl.sample(_oracle(dl), _x(), _sched(dl), 10, prediction="epsilon"), "prediction must be one of"),
    ("new API: prediction / zero SNR", "encode prediction='v_prediction'",
     lambda dl: dl.encode(_oracle(dl), _x(), _sched(dl), 10, prediction="v_prediction"), "prediction must be one of"),
    ("new API: prediction / zero SNR", "to_eps_x0 eps at abar = 0", lambda dl: dl.to_eps_x0(_x(), _x(), 0.0, "eps"), "alpha_bar = 0"),
    ("new API: prediction / zero SNR", "to_eps_x0 x0 at abar = 1", lambda dl: dl.to_eps_x0(_x(), _x(), 1.0, "x0"), "alpha_bar = 1"),
    ("new API: prediction / zero SNR", "ddim_step x0 model at a_t = 1",
     lambda dl: dl.ddim_step(_x(), _x(), 1.0, 1.0, 0.0, prediction="x0"), "alpha_bar = 1"),
    ("new API: prediction / zero SNR", "beta = 1 before the last step",
     lambda dl: dl.NoiseSchedule([0.1, 1.0, 0.2]), "except the last"),
    ("new API: prediction / zero SNR", "rescale with T = 1",
     lambda dl: dl.NoiseSchedule([0.3]).rescale_zero_terminal_snr(), "T >= 2"),
    ("new API: prediction / zero SNR", "OracleEps prediction='sample'",
     lambda dl: dl.OracleEps(_mix(dl), _sched(dl), prediction="sample"), "prediction must be one of"),
    ("new API: prediction / zero SNR", "unknown spacing",
     lambda dl: dl.timesteps(50, 10, "trail"), "unknown spacing"),
]


def outcome(dl, call) -> str:
    """'clean' (ValueError), 'silent' (returned), or the other exception's type name."""
    try:
        call(dl)
    except ValueError:
        return "clean"
    except Exception as err:  # noqa: BLE001  (counting how the old code failed)
        return type(err).__name__
    return "silent"


# ---- the tests ------------------------------------------------------------------------------------------
if __name__ != "__main__":
    import pytest

    import ddim_lib

    @pytest.mark.parametrize("cls, name, call, message", CASES, ids=[f"{c}: {n}" for c, n, _, _ in CASES])
    def test_bad_input_raises_one_value_error(cls, name, call, message):
        with pytest.raises(ValueError, match=message) as info:
            call(ddim_lib)
        assert "\n" not in str(info.value), "one line"

    def test_the_same_valid_input_still_works():
        """Near the refused cases, valid input passes: slerp of nearly (not exactly) opposite latents
        keeps the norm of unit vectors, a_prev = 0 and a_t = 1 are accepted by ddim_step."""
        u = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
        w = torch.tensor([[-1.0, 1e-6]], dtype=torch.float64)
        mid = ddim_lib.slerp(u, w / w.norm(), 0.5)
        assert abs(mid.norm().item() - 1) < 1e-9 and abs(mid[0, 1].item()) > 0.99
        x = _x()
        torch.testing.assert_close(ddim_lib.ddim_step(x, x, 0.5, 0.0, 0.0), x, rtol=0, atol=0)   # a_prev = 0: eps
        torch.testing.assert_close(ddim_lib.ddim_step(x, 2 * x, 1.0, 1.0, 0.0), x, rtol=0, atol=0)  # a_t = 1: x0 = x_t
        torch.testing.assert_close(ddim_lib.predict_eps(x, x, 0.0), x, rtol=0, atol=0)

    def test_checks_run_once_per_call_not_per_step(monkeypatch):
        """The sampler loops call the shape and finiteness checks once per call, whatever S is."""
        import ddim_lib.ode
        import ddim_lib.sampler

        calls = Counter()
        for module in (ddim_lib.sampler, ddim_lib.ode):
            for name in ("check_model_output", "check_result_finite", "check_batched_float", "check_float",
                         "check_alpha_bar"):
                if not hasattr(module, name):
                    continue
                original = getattr(module, name)

                def counted(*args, _name=name, _original=original, **kwargs):
                    calls[_name] += 1
                    return _original(*args, **kwargs)
                monkeypatch.setattr(module, name, counted)
        schedule, model = _sched(ddim_lib), _oracle(ddim_lib)
        for S in (5, 50):
            for run in (lambda: ddim_lib.sample(model, _x(), schedule, S, eta=1.0),
                        lambda: ddim_lib.sample(model, _x(), schedule, S, return_trajectory=True),
                        lambda: ddim_lib.encode(model, _x(), schedule, S),
                        lambda: ddim_lib.ode_sample(model, _x(), schedule, S, "heun")):
                calls.clear()
                run()
                assert dict(calls) == {"check_model_output": 1, "check_result_finite": 1, "check_batched_float": 1}
        calls.clear()
        ddim_lib.ddpm_sample(model, _x(), schedule)
        assert dict(calls) == {"check_model_output": 1, "check_result_finite": 1, "check_batched_float": 1}


if __name__ == "__main__":   # python tests/test_validation.py: the before/after table
    import ddim_lib as dl_module

    torch.set_num_threads(1)
    per_class: dict[str, Counter] = {}
    for cls, name, call, _ in CASES:
        result = outcome(dl_module, call)
        per_class.setdefault(cls, Counter())[result] += 1
        if "-v" in sys.argv and result != "clean":
            print(f"  {cls} | {name}: {result}")
    print("class | cases | handled cleanly | other outcomes")
    for cls, counts in per_class.items():
        others = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "clean")
        print(f"{cls} | {sum(counts.values())} | {counts['clean']} | {others or '-'}")
    total = sum(sum(c.values()) for c in per_class.values())
    print(f"total | {total} | {sum(c['clean'] for c in per_class.values())} |")
