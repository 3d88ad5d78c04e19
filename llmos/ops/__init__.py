"""Native ops, the layer under the models: where the KV cache lives, how attention reads it, and
the batch-invariant (optionally block-quantized) linear layers."""
