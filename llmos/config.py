"""The one Settings object: defaults < `llmos.toml` in the data dir < `LLMOS_*` env < CLI flags.

Subsystems receive their own section in their constructor; nothing below `cli/` and `api/` reads
the environment, so a test can build many kernels with different settings in one process.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict


def default_data_dir() -> Path:
    """`$LLMOS_HOME`, else `$XDG_DATA_HOME/llmos`, else `~/.local/share/llmos`."""
    if home := os.environ.get("LLMOS_HOME"):
        return Path(home).expanduser()
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg).expanduser() / "llmos"
    return Path.home() / ".local" / "share" / "llmos"


# The share of usable RAM the resident models may take when `kernel.memory_budget_bytes` is 0;
# the rest is for Python, activations, the page cache and whatever else runs on the host.
DEFAULT_MEMORY_BUDGET_FRACTION = 0.8
_CGROUP_MEMORY_LIMITS = (
    Path("/sys/fs/cgroup/memory.max"),  # cgroup v2
    Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"),  # cgroup v1
)


def physical_memory_bytes() -> int:
    """Usable RAM: the host's physical memory, or the container's cgroup limit when lower (the
    limit is what the OOM killer enforces)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in _CGROUP_MEMORY_LIMITS:
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


class KernelConfig(BaseModel):
    """The engine tick and its scheduler."""

    max_num_batched_tokens: int = Field(
        512, ge=16, description="Token budget per tick: decode tokens plus prefill-chunk tokens."
    )
    max_num_seqs: int = Field(64, ge=1, description="Most processes running in one tick.")
    max_model_len: int = Field(
        2048, ge=16, description="Longest context (prompt + output) a process may have."
    )
    num_threads: int = Field(
        0, ge=0, description="Torch compute threads; 0 = one per core (one pool per process)."
    )
    seed: int = Field(0, description="Seed for processes that do not bring their own.")
    device: str = Field("cpu", description="Torch device for models and the KV pool (cpu, cuda).")
    batch_invariant: bool = Field(
        True,
        description="Where the native GEMM cannot run (no AVX-512 or C compiler, non-CPU "
        "device), pad small batches so a process's output never depends on its batch "
        "neighbours (the native GEMM is invariant at no cost; see docs/design/kernel.md).",
    )
    policy: Literal["fcfs", "priority", "fair", "llmos"] = Field(
        "llmos",
        description="Queue order: fcfs; priority (classes, then arrival); fair (classes, then "
        "per-owner fair share by virtual token counters, then arrival); llmos (classes, then "
        "fair share, then shortest predicted remaining output with aging).",
    )
    aging_window_s: float = Field(
        60.0,
        gt=0,
        description="llmos policy: a process is never queued behind one of its class and owner "
        "that arrived more than this many seconds after it, whatever their predicted lengths.",
    )
    predict_history_rows: int = Field(
        10_000,
        ge=1,
        description="Finished processes kept in the history table (newest first) and learned "
        "from by the output-length predictor.",
    )
    predict_window: int = Field(
        200,
        ge=2,
        description="Recent finished processes over which the predictor's Kendall's tau is "
        "reported (/os/stats, /metrics, llmos top).",
    )
    predict_retrain_every: int = Field(
        64,
        ge=1,
        description="New finished processes after which the length model is refit (in the "
        "background, one thread, lowest CPU priority).",
    )
    predict_min_records: int = Field(
        32,
        ge=2,
        description="Finished processes needed before the first fit; until then the llmos "
        "policy orders by max_tokens and arrival.",
    )
    stall_free: bool = Field(
        True,
        description="Size each tick's prefill share by a time target so decoding processes keep "
        "flowing (stall-free ticks, after Sarathi-Serve); false = prefill chunks may fill the "
        "whole token budget.",
    )
    tick_target_ms: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="Target time of a tick that carries decoding processes, in ms; auto = "
        "tick_target_factor x the learned cost of a decode-only tick at the running batch.",
    )
    tick_target_factor: float = Field(
        2.5,
        gt=1,
        description="With tick_target_ms = auto: a tick with prefill costs at most this many "
        "decode-only ticks.",
    )
    min_prefill_chunk: int = Field(
        16,
        ge=1,
        description="Fewest prompt tokens a tick computes while a prompt waits, whatever the "
        "time target, so a long prompt always progresses.",
    )
    max_resident_models: int = Field(
        2,
        ge=1,
        le=64,
        description="Most models resident at once (each with its own KV pool); loading another "
        "unloads the idle one with the lowest predicted demand, then the least recently used "
        "(never a pinned one).",
    )
    watchdog_timeout_s: float = Field(
        60.0,
        ge=0,
        description="A tick that has not returned after this long marks the engine stalled: "
        "/ready answers 503 engine_stalled, thread stacks go to the log, live streams end with "
        "an error (0 = no watchdog).",
    )
    watchdog_exit_s: float = Field(
        300.0,
        ge=0,
        description="A tick still stuck after this long makes the server exit with status 70 so "
        "systemd or Kubernetes restarts it (0 = never exit).",
    )
    engine_max_failures: int = Field(
        3,
        ge=1,
        description="Failed ticks of one model within engine_failure_window_s that rebuild its "
        "engine (fresh KV pool, model reloaded); a single failure fails only its batch.",
    )
    engine_failure_window_s: float = Field(
        60.0, gt=0, description="The window for engine_max_failures and engine_max_restarts."
    )
    engine_max_restarts: int = Field(
        3,
        ge=1,
        description="Rebuilds of one engine within engine_failure_window_s that mark a crash "
        "loop: the model is refused (503 engine_crashloop) for engine_crashloop_cooldown_s.",
    )
    engine_crashloop_cooldown_s: float = Field(
        60.0,
        gt=0,
        description="How long a crash-looping model is refused before a request may load it again.",
    )
    memory_budget_bytes: int = Field(
        0,
        ge=0,
        description="Host memory the resident models may use together (weights + KV pool + "
        "swap); 0 = 80% of physical RAM (or of the cgroup memory limit, if lower).",
    )
    demand_window_s: float = Field(
        300.0,
        ge=1,
        le=86_400,
        description="Length of a demand window: requests and tokens per model are counted per "
        "window, kept in the database, and the next window's demand is forecast.",
    )
    demand_alpha: float = Field(
        0.3,
        gt=0,
        le=1,
        description="EWMA weight of the newest window in the demand forecast's recent level.",
    )
    demand_history_days: int = Field(
        7,
        ge=1,
        le=90,
        description="Days of demand history kept and averaged for the forecast's time-of-day part.",
    )
    preload: bool = Field(
        True,
        description="Load models the forecast predicts will be needed in the next demand "
        "window, into free memory or in place of idle models predicted to be needed less.",
    )
    preload_min_requests: float = Field(
        1.0,
        ge=0,
        description="Predicted requests in the next window at which a model counts as needed "
        "(preloaded, and kept before models below it).",
    )
    preload_interval_s: float = Field(
        10.0,
        ge=0,
        description="How often the residency planner saves the demand history and considers a "
        "preload (0 = never: no preloading; demand is saved at stop).",
    )
    allotments_refresh_s: float = Field(
        5.0,
        ge=0,
        description="How often a server re-reads reservations and fair-share weights from the "
        "database, so `llmos users reserve|unreserve|set-share` reach it without a restart "
        "(the admin API applies its own changes at once); 0 = only at start and on API changes.",
    )

    def memory_budget(self, total_ram_bytes: int | None = None) -> int:
        """The memory budget in bytes: `memory_budget_bytes`, or when that is 0 the default
        fraction of `total_ram_bytes` (this host's usable RAM when not given)."""
        if self.memory_budget_bytes:
            return self.memory_budget_bytes
        total = physical_memory_bytes() if total_ram_bytes is None else total_ram_bytes
        return int(total * DEFAULT_MEMORY_BUDGET_FRACTION)


class MemoryConfig(BaseModel):
    """The paged KV cache (virtual memory) and its swap area."""

    block_size: int = Field(16, ge=1, le=1024, description="Tokens per KV block.")
    kv_cache_bytes: int = Field(
        1 << 30, ge=1 << 16, description="Bytes of KV cache preallocated for the pool."
    )
    swap_bytes: int = Field(
        1 << 30, ge=0, description="Bytes of host memory for swapped-out blocks; 0 = recompute."
    )
    enable_prefix_caching: bool = Field(True, description="Reuse KV blocks across shared prefixes.")
    prefix_cache_scope: Literal["user", "global"] = Field(
        "user",
        description="Who shares cached prefixes: each user only their own (a request's "
        "cache_salt opts into a shared one), or everyone (global: single-tenant only).",
    )


class StorageConfig(BaseModel):
    """Where llmos keeps its data."""

    data_dir: Path = Field(default_factory=default_data_dir, description="The data directory.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default is a SQLite file in the data dir."
    )
    busy_timeout_ms: int = Field(
        5000, ge=0, description="How long a SQLite writer waits for the lock before failing."
    )
    lock_timeout_s: float = Field(
        30.0, ge=0, description="How long gc and restore wait for running imports to finish."
    )
    min_free_bytes: int = Field(
        1 << 30,
        ge=0,
        description="Free space on the data dir's file system below which the disk counts as "
        "almost full (`llmos doctor` fails, `/ready` reports `disk_low`).",
    )


class ApiConfig(BaseModel):
    """The HTTP server."""

    host: str = Field("127.0.0.1", description="Address to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port to bind.")
    max_body_bytes: int = Field(8 << 20, ge=1024, description="Largest request body (413 above).")
    max_queue: int = Field(256, ge=1, description="Most waiting processes before 503.")
    drain_timeout_s: float = Field(30.0, ge=0, description="Grace for in-flight work on SIGTERM.")
    send_timeout_s: float = Field(
        30.0,
        ge=0,
        description="A streaming client that reads nothing for this long (its socket full) has "
        "its processes killed and their KV blocks freed (0 = wait forever).",
    )
    model: str = Field(
        "smollm2",
        description="Model resident from the start (registry name, path or default); requests "
        "may name any registry model.",
    )
    enable_fault_injection: bool = Field(
        False,
        description="Test-only: mount POST /os/debug/faults, which makes a model's ticks fail or "
        "hang; `llmos serve` refuses it unless LLMOS_TESTING=1 and the host is loopback.",
    )


class SecurityConfig(BaseModel):
    """Authentication, authorization, quotas, audit and encryption at rest (docs/security.md)."""

    auth: Literal["keys", "none"] = Field(
        "keys", description="API key auth, or none (refused unless the server binds loopback)."
    )
    bootstrap_admin_key: bool = Field(
        True, description="On start, write an admin key to admin_key_file if none works."
    )
    admin_key_file: Path | None = Field(
        None, description="Where the bootstrap admin key lives; default <data dir>/admin.key."
    )
    auth_failures_per_minute: int = Field(
        10,
        ge=1,
        description="Failed sign-ins allowed per client address and per key id per minute; past "
        "it wrong keys get 429 (a valid key is always served).",
    )
    auth_failure_max_delay_s: float = Field(
        2.0,
        ge=0,
        le=60,
        description="Longest delay before a failed sign-in is answered (doubling from 0.05 s "
        "with each recent failure); 0 = answer at once.",
    )
    auth_failures_audited_per_minute: int = Field(
        20,
        ge=1,
        description="Failed sign-ins audited one row each per client address per minute; the "
        "rest are counted in one auth.fail.summary row.",
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Reverse proxies (IPs or CIDRs, JSON list or comma-separated) whose "
        "X-Forwarded-For / Forwarded header names the client; empty = the socket peer.",
    )
    default_requests_per_minute: int = Field(
        0, ge=0, description="Request rate limit for keys that set none; 0 = unlimited."
    )
    default_tokens_per_minute: int = Field(
        0, ge=0, description="Token rate limit for keys that set none; 0 = unlimited."
    )
    audit_key_file: Path | None = Field(
        None, description="HMAC key of the audit chain; default <data dir>/audit.key."
    )
    audit_anchor_file: Path | None = Field(
        None, description="Append-only (seq, hash) anchors; default <data dir>/audit.anchor."
    )
    audit_prompts: bool = Field(
        False, description="Also record prompts and outputs in the audit log (off: counts only)."
    )
    master_key_file: Path | None = Field(
        None,
        description="Master key file when LLMOS_MASTER_KEY is unset; default <data dir>/master.key.",
    )
    encrypt_datasets: bool = Field(True, description="Encrypt imported datasets (AES-256-GCM).")
    redact: bool = Field(
        False, description="Redact emails, phone and card numbers in logs and stored audit text."
    )
    tls_cert_file: Path | None = Field(None, description="PEM certificate: serve HTTPS.")
    tls_key_file: Path | None = Field(None, description="PEM private key for tls_cert_file.")

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_trusted_proxies(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [part.strip() for part in text.split(",") if part.strip()]
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _check_trusted_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an IP address or CIDR network") from exc
        return value


class MonitorConfig(BaseModel):
    """Logging and metrics."""

    log_level: str = Field("INFO", description="Log level for the llmos logger.")
    log_json: bool = Field(False, description="Write logs as JSON lines.")
    max_events: int = Field(
        10_000, ge=1, description="Newest events the event log keeps; older ones are pruned."
    )
    preemption_storm_threshold: int = Field(
        50,
        ge=1,
        description="Preemptions of one model within preemption_storm_window_s that make one "
        "preemption_storm event.",
    )
    preemption_storm_window_s: float = Field(
        60.0, gt=0, description="Window over which preemptions are counted for a storm."
    )


class ClusterConfig(BaseModel):
    """Multi-node mode (Ray)."""

    address: str | None = Field(None, description="ray://host:port of a cluster, or none.")


class _TomlSource(PydanticBaseSettingsSource):
    """Reads `llmos.toml` from the data dir (lowest precedence above the defaults)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = default_data_dir() / "llmos.toml"
        if not path.is_file():
            return {}
        with path.open("rb") as f:
            return tomllib.load(f)


class Settings(BaseSettings):
    """Every setting llmos has, grouped by subsystem."""

    model_config = SettingsConfigDict(env_prefix="LLMOS_", env_nested_delimiter="__")

    kernel: KernelConfig = Field(default_factory=KernelConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    security: SecurityConfig = Field(default_factory=SecurityConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _TomlSource(settings_cls))
