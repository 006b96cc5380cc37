"""What the runtime may assume of every adapter's ``poll_view``: a pure, deterministic,
JSON-serialisable and small restriction of the job, idempotent (a trimmed state is trimmed
again after a restore), and unchanged by the fields it drops (so equal views are shared)."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.ingest import jsonable
from worker.simulators import module
from worker.vendor_registry import REGISTRY
from worker.vendors import VendorAdapter, adapter_class

View = Callable[[dict[str, Any]], dict[str, Any]]
VIEWS: dict[str, View] = {v.name: adapter_class(v.name).poll_view for v in REGISTRY}
VIEWS_AND_DEFAULT: dict[str, View] = {**VIEWS, "default": VendorAdapter.poll_view}

# The fields of every vendor's job, so generated jobs often hold the ones views keep.
FIELDS = sorted({name for v in REGISTRY for name in jsonable(module(v.name).sample_job())})
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
JOBS = st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), JSON, max_size=10)


def compact(value: Any) -> str:
    """As the runtime keeps a view (no sorting: the view's own order must be stable)."""
    return json.dumps(value, separators=(",", ":"))


@pytest.mark.parametrize("name", sorted(VIEWS_AND_DEFAULT))
class TestEveryView:
    @settings(max_examples=50, deadline=None)
    @given(job=JOBS)
    def test_a_view_of_the_view_is_the_view(self, name: str, job: dict[str, Any]) -> None:
        view = VIEWS_AND_DEFAULT[name]
        kept = view(job)
        assert view(kept) == kept
        assert view(json.loads(compact(kept))) == kept  # trimmed again after a restore

    @settings(max_examples=50, deadline=None)
    @given(job=JOBS)
    def test_a_view_is_a_pure_restriction_of_the_job(self, name: str, job: dict[str, Any]) -> None:
        before = copy.deepcopy(job)
        kept = VIEWS_AND_DEFAULT[name](job)
        assert job == before
        assert all(key in job and job[key] == value for key, value in kept.items())

    @settings(max_examples=50, deadline=None)
    @given(job=JOBS)
    def test_a_view_serialises_alike_every_time(self, name: str, job: dict[str, Any]) -> None:
        view = VIEWS_AND_DEFAULT[name]
        text = compact(view(job))
        assert compact(view(copy.deepcopy(job))) == text
        assert json.loads(text) == view(job)

    @settings(max_examples=50, deadline=None)
    @given(job=JOBS, other=JSON)
    def test_the_fields_a_view_drops_do_not_change_it(self, name: str, job: dict[str, Any], other: Any) -> None:
        view = VIEWS_AND_DEFAULT[name]
        kept = view(job)
        changed = {key: (value if key in kept else other) for key, value in job.items()}
        assert compact(view(changed)) == compact(kept)


# Each vendor's view of its simulator's sample job (a realistic body).
SAMPLE_VIEWS: dict[str, dict[str, Any]] = {
    "itron": {"subscription_id": None, "filetype": "Csv"},
    "unicommerce": {"facility": None},
    "elasticpath": {"job_type": "TAX_RUN"},
    "opengate": {},
}
PADDING = "x" * 1024


class TestSampleViews:
    def test_every_vendor_has_its_expected_view(self) -> None:
        assert sorted(SAMPLE_VIEWS) == sorted(VIEWS)

    @pytest.mark.parametrize("name", sorted(SAMPLE_VIEWS))
    def test_the_view_of_a_sample_job_keeps_only_what_polls_read(self, name: str) -> None:
        job = json.loads(compact(jsonable(module(name).sample_job())))
        assert VIEWS[name](job) == SAMPLE_VIEWS[name]

    @pytest.mark.parametrize("name", sorted(SAMPLE_VIEWS))
    def test_a_large_body_leaves_a_small_view(self, name: str) -> None:
        job = {**jsonable(module(name).sample_job()), "notes": PADDING}
        assert len(compact(VIEWS[name](job))) <= 64

    def test_requests_that_differ_only_outside_the_view_share_one_view(self) -> None:
        job = jsonable(module("itron").sample_job())
        other = {**job, "tokens": {"Meter": "M-1"}, "is_ohs_request": True}
        assert compact(VIEWS["itron"](other)) == compact(VIEWS["itron"](job))

    def test_the_default_keeps_the_whole_job(self) -> None:
        job = jsonable(module("opengate").sample_job())
        assert VendorAdapter.poll_view(job) == job
