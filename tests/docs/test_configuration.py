"""Every setting llmos has is documented in docs/configuration.md, with its environment variable."""

from __future__ import annotations

from pathlib import Path

from llmos.config import Settings

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_every_setting_is_documented_with_its_env_var():
    text = DOC.read_text()
    missing = []
    for section, field in Settings.model_fields.items():
        for name, info in field.annotation.model_fields.items():  # type: ignore[union-attr]
            env = f"LLMOS_{section.upper()}__{name.upper()}"
            if f"`{name}`" not in text or env not in text:
                missing.append(f"{section}.{name}")
            assert info.description, f"{section}.{name} has no description"
    assert not missing, f"undocumented settings (add them to {DOC.name}): {missing}"


def test_env_var_overrides_default(monkeypatch):
    monkeypatch.setenv("LLMOS_KERNEL__MAX_NUM_SEQS", "7")
    monkeypatch.setenv("LLMOS_MEMORY__BLOCK_SIZE", "32")
    s = Settings()
    assert s.kernel.max_num_seqs == 7
    assert s.memory.block_size == 32


def test_toml_in_data_dir_is_read_and_env_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMOS_HOME", str(tmp_path))
    (tmp_path / "llmos.toml").write_text("[kernel]\nmax_num_seqs = 5\nmax_model_len = 999\n")
    monkeypatch.setenv("LLMOS_KERNEL__MAX_MODEL_LEN", "1234")
    s = Settings()
    assert s.kernel.max_num_seqs == 5
    assert s.kernel.max_model_len == 1234


def test_memory_budget_is_the_setting_else_a_share_of_usable_ram(monkeypatch):
    from llmos.config import KernelConfig, physical_memory_bytes

    assert KernelConfig().memory_budget(total_ram_bytes=10_000) == 8_000
    assert 0 < KernelConfig().memory_budget() == int(physical_memory_bytes() * 0.8)
    monkeypatch.setenv("LLMOS_KERNEL__MEMORY_BUDGET_BYTES", "12345")
    assert Settings().kernel.memory_budget(total_ram_bytes=10_000) == 12345
