"""The OpenAI-compatible routes (`/v1/...`) and vLLM's tokenizer routes."""
