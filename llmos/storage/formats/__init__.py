"""Model file formats, each parsed by exactly one module: `gguf`, `safetensors`, `hf_folder`.

The registry builds a manifest and `llmos.models` loads a model through these same readers, so
both see the same checked bytes and the same `ModelFacts` (architecture, context length, chat
template); the heavy tensor decoding stays in `llmos.models`.
"""
