"""The CPU fast path: packed GPT-2 forwards, oneDNN GEMMs, flat parameter buffers."""
