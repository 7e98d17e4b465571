"""Any causal LM as the policy, a reward model with a tokenizer of its own: tiny Hugging Face models of
three architectures (random init, ``save_pretrained``, tokenizers built here) through ``ppo-harness train``
and a sweep; the re-tokenised reward checked against the token-id route on an equivalent model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import TINY

ARCHS = ("gpt_neox", "llama", "qwen2")


def _config(arch: str, vocab: int, tok):
    from transformers import GPTNeoXConfig, LlamaConfig, Qwen2Config

    ids = dict(pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.eos_token_id)
    size = dict(vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                max_position_embeddings=128, **ids)
    if arch == "gpt_neox":
        return GPTNeoXConfig(**size)
    if arch == "llama":
        return LlamaConfig(**size, num_key_value_heads=2)
    return Qwen2Config(**size, num_key_value_heads=2)


def make_model(folder: Path, arch: str, words: list[str], head: str = "lm", seed: int = 0) -> Path:
    """A random-initialised ``arch`` model with a word-level tokenizer over ``words``, saved to ``folder``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from harness.models.tokenizer import build_tokenizer

    tok = build_tokenizer(words)
    torch.manual_seed(seed)
    cfg = _config(arch, len(tok), tok)
    cfg.num_labels = 1
    model = AutoModelForCausalLM.from_config(cfg) if head == "lm" else AutoModelForSequenceClassification.from_config(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def words() -> list[str]:
    from harness.tasks import get_task

    return get_task("sentiment").words()


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, words) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    out = {arch: make_model(root / arch, arch, words) for arch in ARCHS}
    # a reward model whose vocabulary is the same words in another order plus words of its own: other ids
    out["rm_other_vocab"] = make_model(root / "rm", "llama", ["great", "awful", *reversed(words), "zebra"], head="cls")
    return out


def _train(tmp_path: Path, *sets: str) -> subprocess.CompletedProcess:
    args = [a for k, v in {**TINY, "train.iterations": 1}.items() for a in ("--set", f"{k}={v}")]
    for s in sets:
        args += ["--set", s]
    return subprocess.run([sys.executable, "-m", "harness.cli", "train", *args, "--runs-dir", str(tmp_path / "runs")],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)


def _run(tmp_path: Path):
    import mlflow

    client = mlflow.tracking.MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    assert len(runs) == 1
    return runs[0]


@pytest.mark.parametrize("arch", ARCHS)
def test_a_causal_lm_of_each_architecture_trains_as_given(zoo, tmp_path, arch):
    out = _train(tmp_path, f"model.policy={zoo[arch]}", "model.reward=gold")
    assert out.returncode == 0, out.stdout + out.stderr
    run = _run(tmp_path)
    assert run.info.status == "FINISHED"
    assert run.data.params["model.policy"] == str(zoo[arch]) and run.data.params["model.sft"] == "auto"
    assert {"eval/gold", "objective/kl", "policy/clipfrac_avg"} <= set(run.data.metrics)
    assert not [t for t in run.data.tags if t.startswith("artifact.")]  # no SFT build: the model as given


def test_a_reward_model_with_its_own_tokenizer_scores_the_text(zoo, tmp_path):
    out = _train(tmp_path, f"model.policy={zoo['qwen2']}", f"model.reward={zoo['rm_other_vocab']}",
                 "advantage.level=sequence", "advantage.baseline=rloo", "train.missing_eos_penalty=null")
    assert out.returncode == 0, out.stdout + out.stderr
    run = _run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.params["model.reward"] == str(zoo["rm_other_vocab"])
    # the optimised score is the reward model's (an untrained head: small, not the gold reward)
    assert run.data.metrics["objective/scores"] != pytest.approx(run.data.metrics["objective/gold"], abs=1e-6)


def test_the_retokenised_score_equals_the_token_id_score_of_an_equivalent_model(zoo, words):
    """Independent route: the same reward model under a permuted vocabulary (embedding rows permuted to
    match) must give, through decode + re-tokenise, the score the shared-token route gives."""
    from transformers import AutoModelForSequenceClassification

    from harness.lm.forward import sequence_scores
    from harness.lm.sampling import encode_prompts
    from harness.models.loading import load_tokenizer
    from harness.models.reward_fn import same_vocabulary, text_reward_fn
    from harness.models.tokenizer import build_tokenizer

    policy_tok = load_tokenizer(zoo["llama"])
    rm = AutoModelForSequenceClassification.from_pretrained(zoo["rm_other_vocab"], num_labels=1).eval()
    rm_tok = load_tokenizer(zoo["rm_other_vocab"])
    assert not same_vocabulary(policy_tok, rm_tok)
    # the same model over the policy's vocabulary: row i of its embedding is the RM's row for the same word
    same = AutoModelForSequenceClassification.from_pretrained(zoo["rm_other_vocab"], num_labels=1).eval()
    emb = rm.get_input_embeddings().weight
    idx = [rm_tok.convert_tokens_to_ids(policy_tok.convert_ids_to_tokens(i)) for i in range(len(policy_tok))]
    same.resize_token_embeddings(len(policy_tok))
    with torch.no_grad():
        same.get_input_embeddings().weight.copy_(emb[idx])
    same.config.pad_token_id = policy_tok.pad_token_id
    prompts = ["the movie was", "i think the food", "this book is"]
    completions = ["great", "awful and cold", "fine i think"]
    by_text = text_reward_fn(rm, rm_tok, "rm")(prompts, completions)
    pids, pmask = encode_prompts(policy_tok, prompts)
    enc = build_tokenizer(words)  # the policy's word ids of the completions, right-padded
    rows = [enc.encode(c, add_special_tokens=False) for c in completions]
    T = max(map(len, rows))
    rids = torch.tensor([r + [policy_tok.pad_token_id] * (T - len(r)) for r in rows])
    mask = torch.tensor([[1.0] * len(r) + [0.0] * (T - len(r)) for r in rows])
    with torch.no_grad():
        by_ids = sequence_scores(same, pids, pmask, rids, mask)
    torch.testing.assert_close(torch.tensor(by_text), by_ids, atol=1e-5, rtol=1e-5)


def test_a_sweep_runs_an_own_model(zoo, tmp_path):
    spec = {"name": "own", "base": {**TINY, "train.iterations": 1, "train.threads": 1, "model.policy": str(zoo["llama"]),
                                    "model.reward": "gold"},
            "grid": {"kl.coef": [0.0]}, "seeds": [0]}
    path = tmp_path / "own.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    out = subprocess.run([sys.executable, "-m", "harness.cli", "sweep", str(path), "--runs-dir", str(tmp_path / "runs")],
                         cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1/1 done, 0 failed" in out.stdout


def test_sft_none_with_a_preset_is_refused_in_one_line(tmp_path):
    out = _train(tmp_path, "model.sft=none")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.sft" in lines[0] and "random-initialised" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_a_policy_whose_tokenizer_has_no_eos_is_refused_before_the_run(zoo, tmp_path):
    """No EOS: no response could end (it used to fail minutes in, in the sampler); refused in one line
    naming model.policy, exit 2, nothing logged."""
    import shutil

    from transformers import AutoTokenizer

    folder = tmp_path / "no_eos"
    shutil.copytree(zoo["llama"], folder)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = None
    tok.save_pretrained(folder)
    assert AutoTokenizer.from_pretrained(folder).eos_token_id is None
    out = _train(tmp_path, f"model.policy={folder}", "model.reward=gold")
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"model.policy '{folder}'" in lines[0] and "no EOS token" in lines[0], out.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
