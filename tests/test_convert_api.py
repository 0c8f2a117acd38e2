"""The public checkpoint API lives in `elasticity.convert` only; `elasticity.models` never imports it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from elasticity import paths

API = ("checkpoint_kind", "load_pretrained", "load_config", "save_pretrained")


@pytest.mark.parametrize("first", ["elasticity.convert", "elasticity.models"])
def test_each_package_imports_first_in_a_fresh_process(first):
  other = "elasticity.models" if first == "elasticity.convert" else "elasticity.convert"
  code = (f"import sys, {first}; "
          f"print('{other}' in sys.modules); "
          "import elasticity.models as m, elasticity.convert as c; "
          f"print(all(callable(getattr(c, n)) and not hasattr(m, n) for n in {API!r}))")
  out = subprocess.run([sys.executable, "-c", code], cwd=paths.PROJECT_ROOT, text=True,
                       capture_output=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  loaded_other, same = out.stdout.split()
  if first == "elasticity.models":
    assert loaded_other == "False", "importing elasticity.models must not import elasticity.convert"
  assert same == "True"


def test_models_names_the_missing_attribute():
  import elasticity.models as m
  assert set(API).isdisjoint(dir(m)) and set(API).isdisjoint(m.__all__)   # no re-export (issue 20)
  with pytest.raises(AttributeError, match="elasticity.models' has no attribute 'load_pretrianed'"):
    m.load_pretrianed  # noqa: B018


def test_exports_replace_an_existing_folder_atomically(tmp_path, monkeypatch):
  import numpy as np
  from elasticity.convert import hf, load_pretrained, orbax_model
  from elasticity.models import ModelConfig, create_model
  cfg = ModelConfig(family="llama", vocab_size=64, hidden_size=16, intermediate_size=32,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=8)
  ids = np.array([[1, 5, 9, 3]], np.int32)
  for save in (hf.save_hf, orbax_model.save_orbax):
    out = tmp_path / save.__name__
    save(create_model(cfg, seed=1), out)
    second = create_model(cfg, seed=2)
    save(second, out)                         # replaces the first
    np.testing.assert_array_equal(np.asarray(load_pretrained(out)(ids)), np.asarray(second(ids)))
    # a failing write leaves the previous export intact and no temporaries behind
    def disk_full(*args, **kwargs):
      raise OSError("disk full")
    if save is hf.save_hf:
      monkeypatch.setattr(hf, "save_file", disk_full)
    else:
      monkeypatch.setattr(orbax_model.ocp.StandardCheckpointer, "save", disk_full)
    with pytest.raises(OSError, match="disk full"):
      save(create_model(cfg, seed=3), out)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(load_pretrained(out)(ids)), np.asarray(second(ids)))
  assert sorted(p.name for p in tmp_path.iterdir()) == ["save_hf", "save_orbax"]
  with pytest.raises(ValueError, match="dtype 'int8' is not one of"):
    hf.save_hf(create_model(cfg), tmp_path / "x", dtype="int8")
