"""The CUDA kernel backends (`model.<mixer>.backend`), found in the registry: every non-torch choice of a mixer
section's `backend` field. On a GPU with the package: the kernel matches the torch path (forward, input and
parameter gradients). Anywhere: a missing package, or CPU tensors, give one clear line."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys

import pytest
import torch

from model.config import ModelConfig
from model.mixers import MIXERS, kernels
from model.positions import POSITIONS


def kernel_backends() -> list[tuple[str, str]]:
    """(mixer, backend) for every kernel backend a registered mixer's section offers."""
    found = []
    for name, cls in MIXERS.items():
        field = getattr(cls.section, "__dataclass_fields__", {}).get("backend")
        if field is not None:
            choices = field.metadata.get("choices", ())
            found += [(name, b) for b in (choices() if callable(choices) else choices) if b != "torch"]
    return found


BACKENDS = kernel_backends()
PACKAGES = set(kernels.PACKAGES) | {b for _, b in BACKENDS}  # backend names are the packages' import names
D, T = 128, 100  # head width 64 (kernels want >= 16); T not a multiple of the kernels' 64-token chunks
# relative (Frobenius) error: fp32 leaves room for TF32 dots in the Triton kernels and for fla's delta rule,
# which runs in bf16 only (rounding its inputs alone costs ~0.4% here); bf16 autocast for bf16 projections
REL_TOL = {"32": 2e-2, "bf16-mixed": 5e-2}


def test_the_registry_offers_kernel_backends():
    assert {("linear", "fla"), ("mamba", "mamba_ssm"), ("retnet", "fla"), ("gla", "fla"), ("deltanet", "fla"),
            ("gated_deltanet", "fla"), ("rwkv7", "fla"), ("fox", "fla")} <= set(BACKENDS)


def build(name: str, backend: str):
    section = MIXERS[name].section
    cfg = ModelConfig(d_model=D, n_heads=2, max_seq_len=T, **{name: section(backend=backend)})
    return MIXERS[name](cfg, POSITIONS[cfg.position](cfg.d_model, cfg.rope_theta))


def is_kernel_module(module: str) -> bool:
    return module.split(".")[0] in PACKAGES


class KernelStubs(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports under the kernel packages give stub modules whose functions fail the test if they are called."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True) if is_kernel_module(fullname) else None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        def attribute(attr: str):
            if attr.startswith("__"):
                raise AttributeError(attr)

            def kernel(*args, **kwargs):
                raise AssertionError(f"{module.__name__}.{attr} was called with CPU tensors")
            return kernel

        module.__getattr__ = attribute


@pytest.fixture
def packages_missing(monkeypatch):
    for module in [m for m in sys.modules if is_kernel_module(m)]:
        monkeypatch.delitem(sys.modules, module)
    for package in PACKAGES:
        monkeypatch.setitem(sys.modules, package, None)  # `import package...` raises ImportError


@pytest.fixture
def packages_stubbed(monkeypatch):
    real = {m: sys.modules.pop(m) for m in list(sys.modules) if is_kernel_module(m)}
    monkeypatch.setattr(sys, "meta_path", [KernelStubs(), *sys.meta_path])
    yield
    for module in [m for m in sys.modules if is_kernel_module(m)]:
        del sys.modules[module]
    sys.modules.update(real)


@pytest.mark.parametrize("name,backend", BACKENDS)
def test_a_missing_package_is_one_line(packages_missing, name, backend):
    with pytest.raises(ImportError, match=r'pip install -e "\.\[kernels\]"') as err:
        build(name, backend)
    assert "\n" not in str(err.value) and f"model.{name}.backend=torch" in str(err.value)


@pytest.mark.parametrize("name,backend", BACKENDS)
def test_cpu_tensors_are_one_line(packages_stubbed, name, backend):
    mixer = build(name, backend).train()
    with pytest.raises(RuntimeError, match=rf"model\.{name}\.backend={backend} runs on CUDA") as err:
        mixer(torch.randn(2, 16, D))
    assert "\n" not in str(err.value) and "backend=torch" in str(err.value)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("precision", list(REL_TOL))
@pytest.mark.parametrize("name,backend", BACKENDS)
def test_kernel_matches_the_torch_path(name, backend, precision):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip(backend)
    torch.manual_seed(0)
    ref = build(name, "torch").cuda().train()
    fast = build(name, backend).cuda().train()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, T, D, device="cuda")
    w = torch.randn(2, T, D, device="cuda")  # a random output weighting: every output counts in the loss
    results = []
    for mixer in (ref, fast):
        xi = x.clone().requires_grad_()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            y, _ = mixer(xi)
        (y.float() * w).sum().backward()
        grads = {"input": xi.grad, **{n: p.grad for n, p in mixer.named_parameters()}}
        assert all(g is not None for g in grads.values()), [n for n, g in grads.items() if g is None]
        results.append((y.detach(), grads))
    (y_ref, g_ref), (y_fast, g_fast) = results
    tol = REL_TOL[precision]
    assert relative_error(y_fast, y_ref) < tol
    errors = {n: relative_error(g_fast[n], g_ref[n]) for n in g_ref}
    assert max(errors.values()) < tol, errors
