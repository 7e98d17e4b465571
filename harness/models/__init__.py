"""Model types and loading: the run's model bundle, the tokenizer, presets, Hugging Face loading."""
