"""A component finds its config section by the section's type (`options(cfg)`, model/options.py `section_name`),
never by the name it is registered under: every registered component that has a section, registered here under a
new name with its usual name gone from the config, builds, runs, counts its FLOPs and activations, and its width
knob is a key under the new name."""

from __future__ import annotations

import pytest
import torch

from model.config import CoreModelConfig
from model.ffn import FFNS
from model.mixers import MIXERS
from model.options import compose, section_name
from model.positions import POSITIONS
from model.transformer import Transformer
from train.ablate.param_match import get, put
from train.estimate.breakdown import layer_bytes

FAMILIES = {"mixer": MIXERS, "ffn": FFNS}
SECTIONED = [(family, name) for family, registry in FAMILIES.items() for name, cls in registry.items()
             if cls.section is not None]


def composed():
    return compose(CoreModelConfig, [MIXERS, FFNS, POSITIONS], "RenamedModelConfig", __name__)


def params(cfg) -> int:
    with torch.device("meta"):
        return sum(p.numel() for p in Transformer(cfg).parameters())


@pytest.mark.parametrize(("family", "name"), SECTIONED)
def test_a_component_reads_its_section_under_any_registry_name(monkeypatch, family, name):
    registry, cls, new = FAMILIES[family], FAMILIES[family][name], f"renamed_{name}"
    monkeypatch.delitem(registry, name)
    monkeypatch.setitem(registry, new, cls)
    cfg = composed()(vocab_size=97, d_model=64, n_layers=2, n_heads=4, max_seq_len=32, **{family: new})
    assert not hasattr(cfg, name), "the usual name is still in the config: this test checks nothing"
    assert section_name(cfg, cls.section) == new and cls.options(cfg) is getattr(cfg, new)

    torch.manual_seed(0)
    model = Transformer(cfg)
    logits, _ = model(torch.randint(0, 97, (2, 16)))
    assert logits.shape == (2, 16, 97) and torch.isfinite(logits).all()
    assert model.flops_per_token(32) > 0
    mixer = new if family == "mixer" else "softmax"
    assert layer_bytes(cfg, mixer, cfg.layer_ffn(mixer), 32, "32") > 0

    key = cls.width_key(cfg)
    if key is not None:
        assert key.startswith(f"{new}.") == (cls.width_knob in cls.section.__dataclass_fields__)
        before = params(cfg)
        put(cfg, key, 8)  # `match: params` sets the knob so
        assert get(cfg, key) == 8 and params(cfg) != before


def test_a_section_type_belongs_to_one_entry(monkeypatch):
    name, cls = next((n, c) for n, c in MIXERS.items() if c.section is not None)
    monkeypatch.setitem(MIXERS, f"{name}_again", cls)
    with pytest.raises(TypeError, match=f"declared by '{name}' and '{name}_again'"):
        composed()


def test_a_missing_section_is_named():
    cls = next(c for c in MIXERS.values() if c.section is not None)
    with pytest.raises(LookupError, match=f"no {cls.section.__name__} section"):
        cls.options(CoreModelConfig())
