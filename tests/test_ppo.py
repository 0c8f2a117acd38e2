"""PPO: GAE and the clipped losses against NumPy; a reward for one token raises its probability on
stories260K; a resumed run equals an uninterrupted one; bad configs fail naming the key."""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require
from elasticity import paths
from elasticity.train import config as config_lib
from elasticity.train import ppo_math
from elasticity.train.checkpoint import Checkpointer
from elasticity.train.metrics import read_jsonl

sys.path.insert(0, str(paths.PROJECT_ROOT))
from configs import ppo as ppo_configs  # noqa: E402


# -- NumPy references -------------------------------------------------------------------------------
def np_gae(rewards, values, mask, gamma, lam):
  adv, ret = np.zeros_like(rewards), np.zeros_like(rewards)
  for b in range(rewards.shape[0]):
    cols = np.flatnonzero(mask[b])
    a = 0.0
    for j in reversed(range(len(cols))):
      t = cols[j]
      v_next = values[b, cols[j + 1]] if j + 1 < len(cols) else 0.0
      delta = rewards[b, t] + gamma * v_next - values[b, t]
      a = delta + gamma * lam * a
      adv[b, t], ret[b, t] = a, a + values[b, t]
  return adv, ret


def np_policy(logp, old, adv, mask, eps):
  ratio = np.exp(logp - old)
  per = -np.minimum(ratio * adv, np.clip(ratio, 1 - eps, 1 + eps) * adv)
  return (per * mask).sum() / mask.sum()


def np_value(v, old, ret, mask, eps):
  vc = np.clip(v, old - eps, old + eps)
  per = 0.5 * np.maximum((v - ret) ** 2, (vc - ret) ** 2)
  return (per * mask).sum() / mask.sum()


def masks(rng, b, t):
  m = np.zeros((b, t), np.float32)
  for r in range(b):
    start = rng.integers(1, t - 2)
    m[r, start:rng.integers(start + 1, t + 1)] = 1
  return m


def test_gae_matches_numpy():
  rng = np.random.default_rng(0)
  m = masks(rng, 5, 12)
  r, v = rng.normal(size=(5, 12)).astype(np.float32), rng.normal(size=(5, 12)).astype(np.float32)
  for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (1.0, 1.0)):
    adv, ret = jax.device_get(ppo_math.gae(jnp.asarray(r), jnp.asarray(v), jnp.asarray(m), gamma, lam))
    want_a, want_r = np_gae(r * m, v * m, m, gamma, lam)
    np.testing.assert_allclose(adv, want_a, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_r, rtol=1e-5, atol=1e-5)


def test_clipped_losses_match_numpy_and_rewards():
  rng = np.random.default_rng(1)
  m = masks(rng, 4, 10)
  lp, old = rng.normal(size=(2, 4, 10)).astype(np.float32) * 0.3
  adv, v, ov, ret = rng.normal(size=(4, 4, 10)).astype(np.float32)
  s = ppo_math.policy_loss_sums(lp, old, adv, m, 0.2)
  np.testing.assert_allclose(float(s["policy_loss"][0] / s["policy_loss"][1]),
                             np_policy(lp, old, adv, m, 0.2), rtol=1e-5)
  s = ppo_math.value_loss_sums(v, ov, ret, m, 0.3)
  np.testing.assert_allclose(float(s["value_loss"][0] / s["value_loss"][1]),
                             np_value(v, ov, ret, m, 0.3), rtol=1e-5)
  score = rng.normal(size=4).astype(np.float32)
  rew, _ = ppo_math.token_rewards(score, lp, old, m, 0.1)
  want = -0.1 * (lp - old) * m
  for b in range(4):
    want[b, np.flatnonzero(m[b])[-1]] += score[b]
  np.testing.assert_allclose(np.asarray(rew), want, rtol=1e-5, atol=1e-6)
  w = np.asarray(ppo_math.whiten(jnp.asarray(adv), jnp.asarray(m)))
  sel = adv[m > 0]
  np.testing.assert_allclose(w[m > 0], (sel - sel.mean()) / np.sqrt(sel.var() + 1e-8), rtol=1e-4,
                             atol=1e-5)
  assert ppo_math.adaptive_kl(0.1, 12.0, 6.0, 100, 10) == pytest.approx(0.1 * (1 + 0.2 * 0.1))


# -- configs ----------------------------------------------------------------------------------------
def test_ppo_without_scorer_names_the_key():
  c = ppo_configs.get_config("tiny")
  with pytest.raises(ValueError, match=r"config\.ppo\.scorer\.path"):
    config_lib.validate(c)


def test_cost_model_without_sign_names_the_key(tmp_path):
  d = tmp_path / "cost"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"model_type": "llama", "num_labels": 1,
                                             "architectures": ["LlamaModelForScore"]}))
  c = ppo_configs.get_config("tiny")
  c.ppo.scorer.path = str(d)
  with pytest.raises(ValueError, match=r"config\.ppo\.scorer\.sign"):
    config_lib.validate(c)
  c.ppo.scorer.sign = -1.0
  config_lib.validate(c)


def test_launch_train_refuses_ppo_without_scorer(tmp_path):
  import subprocess
  out = subprocess.run([sys.executable, "-m", "launch.train", "--config=configs/ppo.py:tiny",
                        f"--workdir={tmp_path / 'w'}"], cwd=paths.PROJECT_ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1
  last = [line for line in out.stderr.splitlines() if line.strip()][-1]    # a usage error: one line
  assert "config.ppo.scorer.path" in last, out.stderr[-2000:]
  assert not (tmp_path / "w" / "checkpoints").exists()


# -- runs on stories260K ----------------------------------------------------------------------------
TOKEN = " the"


class CountScorer:
  """Reward: the share of words of the continuation that are "the"."""
  kind = "test"

  def score(self, texts):
    return np.asarray([t.split().count("the") / max(1, len(t.split())) for t in texts], np.float64)


@pytest.fixture
def stories():
  require(paths.shared_path("models", "stories260K", "stories260K.bin"))
  require(paths.shared_path("data", "imdb", "aclImdb_labeled_train_test.tar.gz"))


def tiny(**ppo):
  c = ppo_configs.get_config("tiny")
  c.export.hf = False
  c.ppo.update(ppo)
  return c


def final_params(workdir):
  ck = Checkpointer(workdir / "run" / "checkpoints")
  step = ck.latest_step()
  ck.close()
  from orbax import checkpoint as ocp
  tree = ocp.StandardCheckpointer().restore(workdir / "run" / "checkpoints" / str(step) / "state")
  return step, jax.tree.leaves(tree["params"]) + jax.tree.leaves(tree["head"])


def token_prob(model_params, graphdef, batch, token_id):
  from flax import nnx
  model = nnx.merge(graphdef, model_params)
  probs = jax.nn.softmax(model(batch["input_ids"], batch["attention_mask"]), axis=-1)[..., token_id]
  m = batch["mask"][:, 1:]
  return float((np.asarray(probs)[:, :-1] * m).sum() / m.sum())


@pytest.mark.slow   # 169 s cold on 2 shared cores (load ~10): compiles generate, scoring and update
def test_reward_for_a_token_raises_its_probability(stories, tmp_path):
  from elasticity.tokenizers import load_tokenizer
  from elasticity.train import ppo_rollout
  from elasticity.train.init import load_model, tokenizer_path
  from elasticity.train.ppo_loop import train_ppo
  from elasticity.train.step import split_params
  c = tiny()
  c.train.num_steps = 6
  c.ppo.kl_coef = 0.0
  tok = load_tokenizer(tokenizer_path(c))
  token_id = tok.encode(TOKEN)[-1]
  model, _ = load_model(c, tokenizer_path(c))
  graphdef, start = split_params(model)
  _, prompts = ppo_rollout.load_prompts(c.data, tok)
  batch, _ = ppo_rollout.sample(model, prompts[:16], c.ppo, seed=123, pad_id=tok.pad_id,
                                stop_tokens=(tok.eos_id,))
  res = train_ppo(c, tmp_path / "run", scorer=CountScorer())
  assert res.status == "completed" and res.step == 6
  _, leaves = final_params(tmp_path)
  after = jax.tree.unflatten(jax.tree.structure(start), leaves[:len(jax.tree.leaves(start))])
  before_p, after_p = token_prob(start, graphdef, batch, token_id), token_prob(after, graphdef, batch,
                                                                                token_id)
  assert after_p > 1.5 * before_p, (before_p, after_p)
  scores = [r["score"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")]
  assert np.mean(scores[-2:]) > np.mean(scores[:2]), scores


@pytest.mark.slow   # 38 s warm, more cold: three PPO runs with rollouts
def test_resumed_run_equals_uninterrupted(stories, tmp_path):
  from elasticity.train.ppo_loop import train_ppo
  c = tiny(kl_control="adaptive", kl_target=1.0, kl_horizon=50)
  full = train_ppo(c, tmp_path / "a" / "run", scorer=CountScorer())
  calls = []
  part = train_ppo(c, tmp_path / "b" / "run", scorer=CountScorer(),
                   stop=lambda: calls.append(1) or len(calls) == 1)
  assert part.status == "preempted" and part.step == 1
  rest = train_ppo(c, tmp_path / "b" / "run", scorer=CountScorer())
  assert rest.status == full.status == "completed" and rest.step == full.step == 4
  (sa, la), (sb, lb) = final_params(tmp_path / "a"), final_params(tmp_path / "b")
  assert sa == sb == 4
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ma = read_jsonl(tmp_path / "a" / "run" / "metrics.jsonl")
  mb = read_jsonl(tmp_path / "b" / "run" / "metrics.jsonl")
  assert [r["step"] for r in mb] == [1, 2, 3, 4]
  for a, b in zip(ma, mb):
    assert a["score"] == b["score"] and a["kl_coef"] == b["kl_coef"]


@pytest.mark.slow   # two short PPO runs with rollouts (compiles generate, scoring and update)
def test_a_snapshot_lost_to_a_kill_is_written_on_resume(stories, tmp_path, monkeypatch):
  """export.snapshots in a PPO run: killed between the checkpoint at a snapshot step and the snapshot,
  the resumed run writes it from the restored state; a last-step snapshot is the final export."""
  from orbax import checkpoint as ocp
  from elasticity.convert import load_pretrained
  from elasticity.train import export
  from elasticity.train.ppo_loop import train_ppo
  c = tiny(max_new_tokens=4, ppo_epochs=1)
  c.train.num_steps, c.checkpoint.every = 2, 1
  c.export.hf = True
  c.export.snapshots = "one=1,two=2"
  write = export.write_snapshots

  def killed(*a, **k):
    raise KeyboardInterrupt("killed before the snapshot")

  monkeypatch.setattr(export, "write_snapshots", killed)
  with pytest.raises(KeyboardInterrupt):
    train_ppo(c, tmp_path / "run", scorer=CountScorer())
  assert not (tmp_path / "run" / "one").exists()
  monkeypatch.setattr(export, "write_snapshots", write)
  gathers = []
  gather = export.gather_model
  monkeypatch.setattr(export, "gather_model", lambda *a: gathers.append(1) or gather(*a))
  assert train_ppo(c, tmp_path / "run", scorer=CountScorer()).status == "completed"
  assert len(gathers) == 2       # "one" on resume, "two" at step 2, whose gather the export reuses
  at1 = ocp.StandardCheckpointer().restore(tmp_path / "run" / "checkpoints" / "1" / "state")
  one, two, final = (load_pretrained(tmp_path / "run" / n) for n in ("one", "two", "hf"))
  np.testing.assert_array_equal(np.asarray(one.embed[...]), np.asarray(at1["params"]["embed"]))
  np.testing.assert_array_equal(np.asarray(two.embed[...]), np.asarray(final.embed[...]))
  assert not np.array_equal(np.asarray(one.embed[...]), np.asarray(two.embed[...]))
