"""Warm starts: SFT, preference pairs, the Bradley-Terry reward model, the cache and shipped artifacts."""
