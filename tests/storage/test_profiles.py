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


TEMPLATE = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}<assistant>"


def test_create_sets_a_context_length_and_chat_template_within_the_models_own(registry, tmp_path):
    registry.import_model(write_gguf(tmp_path / "a.gguf"), "base")  # trained for 128 tokens
    m = registry.create("short", "base", params={"context_length": 64, "chat_template": TEMPLATE})
    assert m.profile is not None and m.profile.context_length == 64
    assert m.profile.chat_template == TEMPLATE and m.profile.sampling() == {}
    with pytest.raises(
        InvalidRequest, match="context_length=4096: base:latest was trained for 128"
    ):
        registry.create("long", "base", params={"context_length": 4096})
    with pytest.raises(
        InvalidRequest, match=r"chat_template: not a valid Jinja template: .*line 1"
    ):
        registry.create("broken", "base", params={"chat_template": "{% for m in messages %}"})
    assert [m.ref for m in registry.list()] == ["base:latest", "short:latest"]


def test_gguf_export_writes_the_profile_into_its_metadata_and_keeps_the_tensors(registry, tmp_path):
    from llmos.storage.formats import gguf

    src = write_gguf(tmp_path / "s.gguf", extra={"general.sampling.temp": 0.25})
    registry.import_model(src, "base")
    registry.create(
        "tuned",
        "base",
        params={"top_k": 7, "min_p": 0.1, "chat_template": TEMPLATE, "stop": ["END"]},
        system="Be brief.",
    )
    out = registry.export("tuned", tmp_path / "tuned.gguf")
    before, after = gguf.read_header(src), gguf.read_header(out)
    assert after.metadata["general.sampling.top_k"] == 7
    assert after.metadata["general.sampling.temp"] == pytest.approx(0.25)
    assert after.metadata["tokenizer.chat_template"] == TEMPLATE
    assert after.metadata["tokenizer.ggml.tokens"] == before.metadata["tokenizer.ggml.tokens"]
    old, new = src.read_bytes(), out.read_bytes()
    for name, t in before.tensors.items():
        u = after.tensors[name]
        assert (
            new[u.data_offset : u.data_offset + u.num_bytes]
            == old[t.data_offset : t.data_offset + t.num_bytes]
        )
    again = registry.import_model(out, "again")  # the profile round-trips where GGUF has keys
    assert again.profile is not None
    assert again.profile.sampling() == {
        "temperature": 0.25,
        "top_k": 7,
        "min_p": pytest.approx(0.1),
    }
    assert again.chat_template == TEMPLATE
    # a model without a profile of its own is exported byte for byte
    plain = registry.export("base", tmp_path / "plain.gguf")
    registry.import_model(write_gguf(tmp_path / "p.gguf"), "p")
    assert (
        registry.export("p", tmp_path / "p-out.gguf").read_bytes()
        == (tmp_path / "p.gguf").read_bytes()
    )
    assert gguf.read_header(plain).metadata["general.sampling.temp"] == pytest.approx(0.25)


def test_hf_export_writes_generation_config_and_chat_template(registry, tmp_path):
    folder = write_hf_folder(tmp_path / "hf")
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "top_p": 0.5}))
    registry.import_model(folder, "base")
    registry.create(
        "tuned", "base", params={"temperature": 0, "max_tokens": 99, "chat_template": TEMPLATE}
    )
    out = registry.export("tuned", tmp_path / "out")
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen == {
        "bos_token_id": 1,
        "top_p": 0.5,
        "temperature": 0,
        "max_new_tokens": 99,
        "do_sample": False,
    }
    assert (out / "chat_template.jinja").read_text() == TEMPLATE
    again = registry.import_model(out, "again")
    assert again.profile is not None
    assert again.profile.sampling() == {"temperature": 0.0, "top_p": 0.5, "max_tokens": 99}
    assert again.chat_template == TEMPLATE


def test_models_stored_before_profiles_get_todays_profile_once(registry, storage, tmp_path):
    require_smollm2()
    ensure_default_model(registry)
    registry.import_model(write_gguf(tmp_path / "s.gguf", extra={"general.sampling.top_k": 9}), "k")
    registry.import_model(write_gguf(tmp_path / "p.gguf"), "plain")
    registry.create("mine", "smollm2", params={"temperature": 1.0})
    with storage.db.session() as s:  # what rows migrated from revision 0003 hold
        s.execute(update(ModelRow).where(ModelRow.name != "mine").values(profile=None))
    assert registry.show("smollm2").profile is None
    ensure_default_model(registry)  # `llmos serve` and `llmos run` call it at start
    assert registry.show("smollm2").profile.sampling() == {"temperature": 0.2, "top_p": 0.9}
    assert registry.show("k").profile.sampling() == {"top_k": 9}
    assert registry.show("plain").profile is None
    assert registry.show("mine").profile.sampling() == {"temperature": 1.0, "top_p": 0.9}
