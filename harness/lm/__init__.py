"""Language-model primitives shared by every implementation: sampling, forwards, the rollout."""
