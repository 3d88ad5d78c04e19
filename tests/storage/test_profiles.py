"""Model profiles: the sampling defaults a model ships are read at import and stored with it."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import update

from llmos.errors import InvalidModelFile, InvalidRequest, NotFound
from llmos.storage.registry import ensure_default_model
from llmos.storage.schema import ModelRow
from tests.required import require_smollm2
from tests.storage.helpers import write_gguf, write_hf_folder


def test_hf_import_reads_generation_config(registry, tmp_path):
    folder = write_hf_folder(tmp_path / "hf")
    (folder / "generation_config.json").write_text(
        json.dumps(
            {
                "do_sample": True,
                "temperature": 0.6,
                "top_p": 0.9,
                "top_k": 20,
                "repetition_penalty": 1.1,
                "max_new_tokens": 256,
                "eos_token_id": 2,
            }
        )
    )
    m = registry.import_model(folder, "hf")
    assert m.profile is not None
    assert m.profile.sampling() == {
        "temperature": 0.6,
        "top_p": 0.9,
        "top_k": 20,
        "repetition_penalty": 1.1,
        "max_tokens": 256,
    }
    assert registry.show("hf").profile == m.profile  # stored, not just returned
    assert registry.tag("hf", "hf2:v1").profile == m.profile


def test_gguf_import_reads_general_sampling_metadata(registry, tmp_path):
    src = write_gguf(
        tmp_path / "s.gguf",
        extra={
            "general.sampling.temp": 0.25,
            "general.sampling.top_p": 0.5,
            "general.sampling.top_k": 30,
            "general.sampling.min_p": 0.125,
            "general.sampling.penalty_repeat": 1.5,
        },
    )
    profile = registry.import_model(src, "s").profile
    assert profile is not None  # values chosen exact in float32
    assert profile.sampling() == {
        "temperature": 0.25,
        "top_p": 0.5,
        "top_k": 30,
        "min_p": 0.125,
        "repetition_penalty": 1.5,
    }


def test_a_model_shipping_no_defaults_has_no_profile(registry, tmp_path):
    assert registry.import_model(write_gguf(tmp_path / "a.gguf"), "a").profile is None
    assert registry.import_model(write_hf_folder(tmp_path / "hf"), "hf").profile is None


@pytest.mark.parametrize(
    ("generation_config", "bad"),
    [
        ({"temperature": -1.0}, "temperature=-1.0"),
        ({"top_p": 1.5}, "top_p=1.5"),
        ({"top_k": "forty"}, "top_k='forty'"),
        ({"max_new_tokens": 0}, "max_tokens=0"),
    ],
)
def test_bad_hf_defaults_are_refused_and_nothing_is_written(
    registry, storage, tmp_path, generation_config, bad
):
    folder = write_hf_folder(tmp_path / "hf")
    (folder / "generation_config.json").write_text(json.dumps(generation_config))
    with pytest.raises(InvalidModelFile, match="generation_config.json") as e:
        registry.import_model(folder, "hf")
    assert bad in str(e.value)
    assert registry.list() == []


def test_bad_gguf_defaults_are_refused(registry, tmp_path):
    src = write_gguf(tmp_path / "b.gguf", extra={"general.sampling.temp": 5.0})
    with pytest.raises(InvalidModelFile, match=r"general\.sampling.*temperature=5\.0"):
        registry.import_model(src, "b")
    assert registry.list() == []


def test_a_model_stored_before_profiles_loads_with_none(registry, storage, tmp_path):
    registry.import_model(write_gguf(tmp_path / "a.gguf"), "a")
    with storage.db.session() as s:  # what a row migrated from revision 0003 holds
        s.execute(update(ModelRow).values(profile=None))
    assert registry.show("a").profile is None


def test_the_default_model_gets_its_model_cards_profile(registry):
    require_smollm2()
    m = ensure_default_model(registry)
    assert m.profile is not None and m.profile.sampling() == {"temperature": 0.2, "top_p": 0.9}
    assert registry.show("smollm2").profile == m.profile


def test_create_shares_blobs_and_layers_its_profile_over_the_parents(registry, storage, tmp_path):
    src = write_gguf(tmp_path / "s.gguf", extra={"general.sampling.temp": 0.25})
    registry.import_model(src, "base")
    blobs = sorted(storage.layout.blobs.iterdir())
    m = registry.create("tuned:v1", "base", params={"top_k": 5, "stop": ["END"]}, system="Hi.")
    assert m.parent == "base:latest" and m.files == registry.show("base").files
    assert m.profile is not None
    assert m.profile.model_dump(exclude_none=True) == {
        "temperature": 0.25,
        "top_k": 5,
        "system": "Hi.",
        "stop": ["END"],
    }
    assert sorted(storage.layout.blobs.iterdir()) == blobs  # no new bytes
    assert registry.create("t2", "tuned:v1", params={"temperature": 1}).profile.temperature == 1.0


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ({"params": {"temprature": 0.2}}, InvalidRequest, "unknown parameter 'temprature'"),
        ({"params": {"top_p": 0.0}}, InvalidRequest, "top_p=0.0"),
        ({"params": {"temperature": float("nan")}}, InvalidRequest, "temperature=nan"),
        ({"params": {}, "src": "nope"}, NotFound, "model nope:latest not found"),
    ],
)
def test_create_refuses_bad_input_and_writes_nothing(registry, tmp_path, args, error, match):
    registry.import_model(write_gguf(tmp_path / "a.gguf"), "base")
    with pytest.raises(error, match=match):
        registry.create("new", args.get("src", "base"), params=args["params"])
    assert [m.ref for m in registry.list()] == ["base:latest"]
