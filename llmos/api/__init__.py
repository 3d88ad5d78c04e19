"""The HTTP faces of llmos: the OpenAI-compatible `/v1` API and the OS admin API under `/os`."""
