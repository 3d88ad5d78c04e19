"""Device backends: where the KV cache lives and how attention reads it."""
