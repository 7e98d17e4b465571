"""``ppo-harness bench``: the custom PPO core against TRL's PPOTrainer on one synthetic workload.

What is measured. Both implementations run the same equal-math PPO iteration (token level,
separate value / ref / reward models, k1 KL in the reward, advantage whitening, clipped policy and
value losses, no missing-EOS penalty, no gradient clipping) on the same random-initialised GPT-2
models, each in its own fresh subprocess so that peak RSS is per implementation. Warm-up
iterations are excluded from every figure. Per implementation: iterations/s, generated tokens/s,
the time split (generation, scoring + ref / value forwards, update, other), CPU seconds per
iteration, peak RSS, achieved GFLOP/s and its share of the machine's fp32 matmul peak.

Workloads: S = GPT-2 2 layers x 64 wide x 2 heads; M = 4 x 256 x 4; n_positions 128 for both;
a character vocabulary (26 letters + pad, EOS, unk); prompts of 16 tokens, responses of up to 32,
a rollout batch of 32, 4 PPO epochs x 4 minibatches, fp32, ``torch.set_num_threads(threads)``.

How ratios are reported. Custom and TRL are measured side by side in one run (``--vs trl``;
with ``--repeats`` the children interleave custom, trl, custom, ... and the median repeat is
reported), so both see the same machine state; "custom / trl" divides the two columns, and
the CPU-time speed-up is TRL's CPU seconds per iteration over custom's (robust to a busy machine).
Beside them stands the fp32 matmul peak measured in the same run on the same threads: the best
of a few 2048^2 products through ``torch.matmul`` (MKL on x86) and through oneDNN
(``gemm.linear``), before the first child and after each, whichever kernel is faster.

``--variant`` benchmarks a switch that changes the math (a value head on the policy's trunk,
bf16 autocast) apart from the equal-math figure; the table and the JSON say which variant ran.
TRL keeps its own loop (bf16 where the variant has it).

FLOPs are counted analytically and identically for both sides: the useful work of one iteration
on the tokens that exist (the prompt and each response up to its EOS, from that implementation's
own mean response length l; padding and recomputation not counted)::

    F_fwd(model, n_tokens) = 2 * N * n_tokens      N = matmul parameters: the
                                                   transformer blocks + the output head
                                                   (LM head V x d, or the 1 x d score head)
    generation   F_fwd(policy, B * (P + l - 1))    the KV cache feeds each token once
    scoring      F_fwd(ref | value | reward, B * (P + l)) each
    update       epochs * 3 * (F_fwd(policy) + F_fwd(value)) over B * (P + l)   (fwd + bwd = 3x;
                 no F_fwd(value) with a shared value trunk)

Embedding look-ups, attention scores (4 * n_layer * L * d per token: ~12% on S, ~3% on M),
norms and the optimiser are not counted, so the achieved GFLOP/s is a lower bound.

TRL's time split comes from timing its own module functions (``trl_loop.phase_clock``);
nothing in its computation is changed. Known difference: TRL treats a sampled pad token as the
end of the response (its pad-as-mask convention); the compute is the same either way.

Modules:

- ``workload``: sizes, tokenizer, prompts, task, models, the shared equal-math RunConfig, FLOP counts
- ``custom_loop``: the custom core's iterations (``harness.ppo.loop.ppo_iteration``), timed
- ``trl_loop``: TRL's PPOTrainer on ``baselines.trl_ppo.trl_args``, timed by ``phase_clock``
- ``peak``: the machine's fp32 matmul peak
- ``child``: one implementation in a fresh subprocess (``spawn``; the child side is ``__main__``)
- ``results``: rows -> summaries, the JSON document, the printed table
- ``run``: ``run_bench(**options) -> the result document`` (``BenchInputError`` for a bad option), what ``ppo-harness bench`` calls
"""
