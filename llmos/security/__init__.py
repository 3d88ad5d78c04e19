"""Users, API keys, roles and per-model grants, quotas, rate limits, the audit chain, and
encryption at rest. Import the pieces from their modules (`llmos.security.keys.ApiKeys`, ...);
`llmos.security.guard.Guard` is what the API uses. See docs/security.md.
"""
