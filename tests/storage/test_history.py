"""The history of finished processes and the saved length model: bounded to the newest rows,
written without blocking, and a restarted server predicts as the old one did."""

from __future__ import annotations

import random
import time

from llmos.config import KernelConfig, Settings
from llmos.kernel.predict import HistoryRecord, PromptFeatures
from llmos.storage.history import HistoryStore, load_model, model_path, save_model
from llmos.system import open_predictor


def _record(i: int, *, long: bool) -> HistoryRecord:
    text = f"Write a long story about dragon number {i}." if long else f"What is {i} plus 2?"
    features = PromptFeatures(20, text, "system,user,assistant", 512, 0.0, 1.0, "smollm2", "ann")
    return HistoryRecord(features, 400 + i % 50 if long else 3 + i % 4, "stop", None)


def test_the_table_keeps_only_the_newest_rows(storage_config):
    store = HistoryStore(storage_config, max_rows=5)
    for i in range(12):
        store.append(_record(i, long=i % 2 == 0).to_dict())
    store.flush()
    rows = [HistoryRecord.from_dict(r) for r in store.recent()]
    assert [r.features.text for r in rows] == [
        _record(i, long=i % 2 == 0).features.text for i in range(7, 12)
    ]
    assert rows[-1] == _record(11, long=False)


def test_the_model_file_is_replaced_whole(storage_config):
    assert load_model(storage_config) is None
    save_model(storage_config, b"first")
    save_model(storage_config, b"second")
    assert load_model(storage_config) == b"second"
    assert [p.name for p in model_path(storage_config).parent.iterdir()] == [
        model_path(storage_config).name
    ]


def test_a_restarted_server_predicts_from_the_stored_history_and_model(storage_config):
    settings = Settings(
        storage=storage_config,
        kernel=KernelConfig(predict_min_records=20, predict_retrain_every=40),
    )
    rng = random.Random(0)
    first = open_predictor(settings)
    first.wait_idle()
    for i in range(40):
        first.record(_record(i, long=rng.random() < 0.3))
    assert first.wait_idle() and first.model is not None
    probe = [_record(99, long=True).features, _record(98, long=False).features]
    before = first.model.predict(probe)
    assert before[0] > 10 * before[1]
    first.close()  # the server stops: queued history is written

    second = open_predictor(settings)
    for _ in range(200):
        if second.model is not None and second.stats().num_records == 40:
            break
        time.sleep(0.05)
    assert second.stats().num_records == 40
    assert second.model is not None and second.model.predict(probe) == before
    second.close()
