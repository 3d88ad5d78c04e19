"""Output-length prediction from the system's own history (docs/design/scheduling.md).

Every process that finishes (stop or length) becomes a `HistoryRecord`: what its prompt looked
like (`PromptFeatures`) and how many tokens it produced. A `LengthModel` (hashed word n-grams of
the last user message plus a few numbers, ridge regression on log output tokens) is refit from
the newest records on a background thread, at most one fit at a time, with the numeric libraries
held to one thread and the thread at the lowest CPU priority, so the tick never waits for it.
The fitted model is swapped in by one reference assignment (readers never see half a model) and
handed to `on_trained` to persist. Until a model exists `predict` answers None and the `llmos`
policy falls back to `max_tokens` and arrival order. Quality is Kendall's tau between predicted
and actual output tokens over a sliding window of recent processes.
"""

from __future__ import annotations

import collections
import contextlib
import io
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from llmos.kernel.params import SamplingParams

logger = logging.getLogger(__name__)

MAX_TEXT_CHARS = 2000  # of the last user message kept as a feature
MAX_DECODE_TOKENS = 1024  # prompt tail decoded to find the last user message
MODEL_FORMAT = 1  # bumped when LengthModel's features change: older files are ignored
NUM_DENSE = 6  # the numeric columns after the hashed text

# Turn openers of the chat templates llmos serves (ChatML, Gemma, Llama 3) and the role after
# them; a prompt without any is a plain completion and its whole tail is the "message".
_TURN = re.compile(r"(?:<\|im_start\|>|<start_of_turn>|<\|start_header_id\|>)\s*([A-Za-z_]+)")
_TURN_END = re.compile(r"<\|im_end\|>|<end_of_turn>|<\|eot_id\|>|<\|end_header_id\|>")


@dataclass(slots=True, frozen=True)
class PromptFeatures:
    """What is known about a process when it arrives (plain data: stored in the history)."""

    num_prompt_tokens: int
    text: str  # the last user message (or the prompt's tail for a plain completion)
    roles: str  # the template's role structure, e.g. "system,user,assistant,user"
    max_tokens: int
    temperature: float
    top_p: float
    model: str
    owner: str

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptFeatures:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@dataclass(slots=True, frozen=True)
class HistoryRecord:
    """One finished process: its features and its outcome."""

    features: PromptFeatures
    num_output_tokens: int
    finish_reason: str  # "stop" or "length"
    predicted_output_tokens: float | None = None  # what was predicted at arrival

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HistoryRecord:
        return cls(
            PromptFeatures.from_dict(data["features"]),
            int(data["num_output_tokens"]),
            str(data["finish_reason"]),
            data.get("predicted_output_tokens"),
        )


def features_of(
    prompt_token_ids: Sequence[int],
    params: SamplingParams,
    *,
    tokenizer: Any,
    max_tokens: int,
    model: str,
    owner: str,
) -> PromptFeatures:
    """A process's features: the decoded prompt tail split into the template's turns."""
    tail = prompt_token_ids[-MAX_DECODE_TOKENS:]
    try:
        text = tokenizer.decode(list(tail), skip_special_tokens=False)
    except Exception:  # a tokenizer that cannot decode its own ids: learn from numbers only
        logger.debug("could not decode a prompt for its features", exc_info=True)
        text = ""
    roles, message = split_turns(text)
    return PromptFeatures(
        num_prompt_tokens=len(prompt_token_ids),
        text=message[-MAX_TEXT_CHARS:],
        roles=",".join(roles),
        max_tokens=max_tokens,
        temperature=float(params.temperature),
        top_p=float(params.top_p),
        model=model,
        owner=owner,
    )


def split_turns(text: str) -> tuple[list[str], str]:
    """(roles in order, the last user message) of a templated prompt; ([], text) for a plain one."""
    turns = list(_TURN.finditer(text))
    if not turns:
        return [], text.strip()
    roles = [m.group(1).lower() for m in turns]
    users = [m for m in turns if m.group(1).lower() == "user"]
    last = users[-1] if users else turns[-1]
    body = text[last.end() :]
    end = _TURN_END.search(body)
    return roles, (body[: end.start()] if end else body).strip()


def remaining_tokens(proc_predicted: float | None, num_output: int, max_tokens: int) -> float:
    """Predicted tokens a process still has to produce. Cold start: all of `max_tokens`. A
    process that outran its prediction is expected to run as long again as it has so far (the
    estimate doubles each time it is passed), never past `max_tokens`."""
    left = max(max_tokens - num_output, 0)
    if proc_predicted is None:
        return float(left)
    if num_output < proc_predicted:
        return min(proc_predicted - num_output, float(left))
    return min(float(max(num_output, 1)), float(left))


class LengthModel:
    """Ridge regression of log(1 + output tokens) on hashed word 1-2-grams of the last user
    message, the role structure, model and owner, and log prompt length / max_tokens / sampling.

    Why this and not trees: the signal is mostly in the words ("list", "story", "one word",
    "yes or no"), which are thousands of sparse columns; a linear model learns a weight per
    n-gram from a few hundred examples, fits in milliseconds and predicts in microseconds,
    where gradient-boosted trees on hashed sparse text need far more data and time.
    """

    def __init__(self, alpha: float = 1.0, num_hash_features: int = 1 << 14) -> None:
        self.alpha = alpha
        self.num_hash_features = num_hash_features
        self.coef: Any = None  # numpy (num_hash_features + NUM_DENSE,) once fit
        self.intercept = 0.0
        self.num_records = 0

    def _vectorizer(self) -> Any:
        from sklearn.feature_extraction.text import HashingVectorizer

        return HashingVectorizer(
            n_features=self.num_hash_features,
            ngram_range=(1, 2),
            alternate_sign=False,
            token_pattern=r"(?u)\b\w+\b|[?!:]",
        )

    def _matrix(self, rows: Sequence[PromptFeatures]) -> Any:
        import numpy as np
        from scipy import sparse

        docs = [
            f"{f.text} __roles_{f.roles.replace(',', '_')} __model_{f.model} __owner_{f.owner}"
            for f in rows
        ]
        text = self._vectorizer().transform(docs)
        nums = np.array(
            [
                [
                    math.log1p(f.num_prompt_tokens),
                    math.log1p(f.max_tokens),
                    math.log1p(len(f.text.split())),
                    f.temperature,
                    f.top_p,
                    f.roles.count("user"),
                ]
                for f in rows
            ],
            dtype=np.float64,
        )
        return sparse.hstack([text, sparse.csr_matrix(nums)], format="csr")

    def fit(self, records: Sequence[HistoryRecord]) -> LengthModel:
        import numpy as np
        from sklearn.linear_model import Ridge

        x = self._matrix([r.features for r in records])
        y = np.log1p(np.array([r.num_output_tokens for r in records], dtype=np.float64))
        regressor = Ridge(alpha=self.alpha).fit(x, y)
        self.coef = np.asarray(regressor.coef_, dtype=np.float64)
        self.intercept = float(regressor.intercept_)
        self.num_records = len(records)
        return self

    def predict(self, rows: Sequence[PromptFeatures]) -> list[float]:
        """Predicted output tokens of each row, within [1, its max_tokens]."""
        import numpy as np

        assert self.coef is not None, "predict before fit"
        y = np.expm1(self._matrix(rows) @ self.coef + self.intercept)
        return [float(min(max(v, 1.0), f.max_tokens)) for v, f in zip(y, rows, strict=True)]

    def to_bytes(self) -> bytes:
        """The fitted weights as an `.npz` of plain arrays (no pickle: loading runs no code)."""
        import numpy as np

        assert self.coef is not None, "save before fit"
        buf = io.BytesIO()
        meta = [MODEL_FORMAT, self.num_hash_features, self.num_records]
        np.savez(
            buf, meta=np.array(meta), coef=self.coef, extra=np.array([self.intercept, self.alpha])
        )
        return buf.getvalue()

    @staticmethod
    def from_bytes(data: bytes) -> LengthModel | None:
        """A model saved by `to_bytes`, or None if it is from another format or unreadable."""
        import numpy as np

        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                fmt, num_hash_features, num_records = (int(v) for v in z["meta"])
                coef, (intercept, alpha) = z["coef"], z["extra"]
        except Exception:
            logger.warning("the saved length model is unreadable; starting cold", exc_info=True)
            return None
        if fmt != MODEL_FORMAT or coef.shape != (num_hash_features + NUM_DENSE,):
            return None
        model = LengthModel(alpha=float(alpha), num_hash_features=num_hash_features)
        model.coef, model.intercept, model.num_records = coef, float(intercept), num_records
        return model


@dataclass(slots=True)
class PredictorStats:
    """How well the predictor ranks: Kendall's tau over the window, and what it learned from."""

    kendall_tau: float | None  # None until the window holds two predicted processes
    num_window: int  # predicted processes in the window
    num_records: int  # records in memory (the training set)
    num_trained_on: int  # records the current model was fit on (0: cold start)
    num_fits: int
    last_fit_s: float  # wall seconds of the last fit
    by_model: dict[str, float | None] = field(default_factory=dict)  # tau per model


def kendall_tau(predicted: Sequence[float], actual: Sequence[float]) -> float | None:
    """Kendall's tau-b (scipy), None when undefined (fewer than two points, or no variation)."""
    if len(predicted) < 2:
        return None
    from scipy.stats import kendalltau

    tau = kendalltau(predicted, actual).statistic
    return None if tau is None or math.isnan(tau) else float(tau)


class Predictor:
    """The current length model, the records it learns from, and its measured quality.

    `predict` and `record` are safe from any thread. Fits run on a short-lived background
    thread, one at a time, once `retrain_every` new records have arrived.
    """

    def __init__(
        self,
        *,
        max_records: int = 10_000,
        window: int = 200,
        retrain_every: int = 64,
        min_records: int = 32,
        on_record: Callable[[HistoryRecord], None] | None = None,
        on_trained: Callable[[bytes], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.min_records = min_records
        self.retrain_every = retrain_every
        self.on_record = on_record  # e.g. append to the history table
        self.on_trained = on_trained  # e.g. write the model into the data dir
        self.on_close = on_close  # e.g. write the queued history
        self.model: LengthModel | None = None
        self._records: collections.deque[HistoryRecord] = collections.deque(maxlen=max_records)
        self._window: collections.deque[tuple[str, float, int]] = collections.deque(maxlen=window)
        self._lock = threading.Lock()
        self._num_new = 0
        self._fitting: threading.Thread | None = None
        self.num_fits = 0
        self.last_fit_s = 0.0

    # ---- any thread ------------------------------------------------------------------------
    def predict(self, features: PromptFeatures) -> float | None:
        model = self.model  # one read: a fit swapping the model in cannot tear it
        if model is None:
            return None
        try:
            return model.predict([features])[0]
        except Exception:
            logger.warning("length prediction failed; using max_tokens", exc_info=True)
            return None

    def record(self, rec: HistoryRecord) -> None:
        """A process finished: learn from it, score the prediction it had, pass it on."""
        with self._lock:
            self._records.append(rec)
            if rec.predicted_output_tokens is not None:
                self._window.append(
                    (rec.features.model, rec.predicted_output_tokens, rec.num_output_tokens)
                )
            self._num_new += 1
        if self.on_record is not None:
            try:
                self.on_record(rec)
            except Exception:
                logger.exception("could not store a history record")
        self._maybe_fit()

    def seed(self, records: Iterable[HistoryRecord], model: LengthModel | None = None) -> None:
        """Start from stored history (oldest first) and a saved model (a restart). Records
        that arrived since the start stay the newest, and still count toward the next refit."""
        with self._lock:
            since_start = list(self._records)
            self._records.clear()
            self._records.extend(records)
            self._records.extend(since_start)
            self._num_new = len(since_start) if model is not None else len(self._records)
        if model is not None:
            self.model = model
        self._maybe_fit()

    def stats(self) -> PredictorStats:
        with self._lock:
            window = list(self._window)
            num_records = len(self._records)
        by_model: dict[str, float | None] = {}
        for name in sorted({m for m, _, _ in window}):
            rows = [(p, a) for m, p, a in window if m == name]
            by_model[name] = kendall_tau([p for p, _ in rows], [a for _, a in rows])
        model = self.model
        return PredictorStats(
            kendall_tau=kendall_tau([p for _, p, _ in window], [a for _, _, a in window]),
            num_window=len(window),
            num_records=num_records,
            num_trained_on=model.num_records if model is not None else 0,
            num_fits=self.num_fits,
            last_fit_s=self.last_fit_s,
            by_model=by_model,
        )

    def close(self) -> None:
        """The server is stopping: let a running fit end, then `on_close`."""
        self.wait_idle(10.0)
        if self.on_close is not None:
            self.on_close()

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait for a running fit to end (tests, benchmarks); False on timeout."""
        thread = self._fitting
        if thread is not None:
            thread.join(timeout_s)
            return not thread.is_alive()
        return True

    # ---- fitting (background) --------------------------------------------------------------
    def _maybe_fit(self) -> None:
        with self._lock:
            if self._fitting is not None and self._fitting.is_alive():
                return
            due = self._num_new >= self.retrain_every or (self.model is None and self._num_new > 0)
            if not due or len(self._records) < self.min_records:
                return
            records = list(self._records)
            self._num_new = 0
            self._fitting = threading.Thread(
                target=self._fit, args=(records,), name="llmos-predictor-fit", daemon=True
            )
            self._fitting.start()

    def fit_now(self) -> None:
        """Fit on the records in memory on this thread (tests, benchmarks, `seed` callers)."""
        with self._lock:
            records = list(self._records)
            self._num_new = 0
        if len(records) >= 2:
            self._fit(records)

    def _fit(self, records: list[HistoryRecord]) -> None:
        lower_thread_priority()
        started = time.perf_counter()
        try:
            with one_compute_thread():
                model = LengthModel().fit(records)
        except Exception:
            logger.exception("fitting the length model on %d records failed", len(records))
            return
        self.model = model
        self.num_fits += 1
        self.last_fit_s = time.perf_counter() - started
        logger.debug("length model fit on %d records in %.3fs", len(records), self.last_fit_s)
        if self.on_trained is not None:
            try:
                self.on_trained(model.to_bytes())
            except Exception:
                logger.exception("could not save the length model")


def lower_thread_priority() -> None:
    """Nice this thread to 19 (Linux schedules threads separately), so a fit takes only the CPU
    the tick leaves idle; a no-op where that is not possible."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


@contextlib.contextmanager
def one_compute_thread() -> Any:
    """Hold BLAS/OpenMP to one thread while fitting: one compute pool per process (the torch
    pool of the tick owns the cores)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # threadpoolctl comes with scikit-learn; without it, fit as is
        yield
        return
    with threadpool_limits(limits=1):
        yield
