"""Structural promise behind the body trim (docs/design/state-store.md §3.6): after the
vendor accepted a job, each adapter reads of the job body only the fields its
``poll_view`` keeps.

The adapter module's source is followed from ``poll`` and ``cancel`` (the calls the
runtime makes once ``vendor_job_id`` is known, ``runtime/calls.py``) through the methods
and module functions they hand the spec or its job to. A job read as ``job.get("x")`` or
``job["x"]`` names field x; any other use (the whole body serialised, passed to code
outside the module, aliased) is reported, and fails the check until a person looks."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from worker.vendor_registry import REGISTRY
from worker.vendors import adapter_class
from worker.vendors.base import kept

AFTER_ACCEPTANCE = ("poll", "cancel")
Function = ast.FunctionDef | ast.AsyncFunctionDef


@dataclass
class Reads:
    fields: set[str] = field(default_factory=set)
    unknown: list[str] = field(default_factory=list)  # uses of the spec or job not understood


@dataclass(frozen=True)
class Target:
    """A function of the module, and how many of its leading parameters a call leaves out
    (``self`` of a method called as ``self.m(...)``)."""

    node: Function
    skipped: int


class ModuleCode:
    def __init__(self, source: str, class_name: str) -> None:
        tree = ast.parse(source)
        self.functions = {n.name: n for n in tree.body if isinstance(n, Function)}
        (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
        self.methods = {n.name: n for n in cls.body if isinstance(n, Function)}

    def target(self, call: ast.Call) -> Target | None:
        func = call.func
        if isinstance(func, ast.Name) and func.id in self.functions:
            return Target(self.functions[func.id], 0)
        if (
            isinstance(func, ast.Attribute)
            and isinstance(func.value, ast.Name)
            and func.value.id == "self"
            and func.attr in self.methods
        ):
            method = self.methods[func.attr]
            static = any(isinstance(d, ast.Name) and d.id == "staticmethod" for d in method.decorator_list)
            return Target(method, 0 if static else 1)
        return None


def _parameter(target: Target, call: ast.Call, argument: ast.expr) -> str | None:
    """The name of the parameter of ``target`` that ``argument`` of ``call`` binds."""
    params = [a.arg for a in (*target.node.args.posonlyargs, *target.node.args.args)][target.skipped :]
    for index, arg in enumerate(call.args):
        if arg is argument:
            return params[index] if index < len(params) else None
    for keyword in call.keywords:
        if keyword.value is argument:
            return keyword.arg
    return None


Todo = list[tuple[Function, str, str]]  # (function, its parameter holding the spec or job, "spec" | "job")


def job_reads(source: str, class_name: str, entries: tuple[str, ...] = AFTER_ACCEPTANCE) -> Reads:
    """The job fields that ``entries`` of ``class_name``, and what they call, read."""
    code = ModuleCode(source, class_name)
    reads = Reads()
    todo: Todo = [(m, m.args.args[1].arg, "spec") for name in entries if (m := code.methods.get(name)) is not None]
    done: set[tuple[int, str, str]] = set()
    while todo:
        function, parameter, kind = todo.pop()
        if (id(function), parameter, kind) in done:
            continue
        done.add((id(function), parameter, kind))
        parents = {child: node for node in ast.walk(function) for child in ast.iter_child_nodes(node)}
        for node in ast.walk(function):
            if not (isinstance(node, ast.Name) and node.id == parameter and isinstance(node.ctx, ast.Load)):
                continue
            parent = parents[node]
            if kind == "job":
                _job_use(node, parents, code, reads, todo)
            elif isinstance(parent, ast.Attribute) and parent.value is node:
                if parent.attr == "job":
                    _job_use(parent, parents, code, reads, todo)
            else:
                _passed_on(node, parents, code, reads, todo, "spec")
    return reads


def _job_use(expr: ast.expr, parents: dict[ast.AST, ast.AST], code: ModuleCode, reads: Reads, todo: Todo) -> None:
    parent = parents[expr]
    if isinstance(parent, ast.Subscript) and parent.value is expr and (name := _text(parent.slice)) is not None:
        reads.fields.add(name)
        return
    if isinstance(parent, ast.Attribute) and parent.value is expr and parent.attr == "get":
        call = parents[parent]
        if isinstance(call, ast.Call) and call.func is parent and call.args and (name := _text(call.args[0])):
            reads.fields.add(name)
            return
    _passed_on(expr, parents, code, reads, todo, "job")


def _passed_on(
    expr: ast.expr, parents: dict[ast.AST, ast.AST], code: ModuleCode, reads: Reads, todo: Todo, kind: str
) -> None:
    """``expr`` (the spec or its job) as an argument of a call into this module is
    followed there; any other use is unknown."""
    parent = parents[expr]
    call = parents[parent] if isinstance(parent, ast.keyword) else parent
    if isinstance(call, ast.Call) and call.func is not expr:
        target = code.target(call)
        name = _parameter(target, call, expr) if target is not None else None
        if target is not None and name is not None:
            todo.append((target.node, name, kind))
            return
    reads.unknown.append(f"line {expr.lineno}: the {kind} in {ast.unparse(call)[:80]}")


def _text(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def source_of(cls: type[Any]) -> str:
    return inspect.getsource(inspect.getmodule(cls))  # type: ignore[arg-type]


ADAPTERS = {v.name: adapter_class(v.name) for v in REGISTRY}


def keeps_exactly(view: Callable[[dict[str, Any]], dict[str, Any]], fields: set[str]) -> bool:
    """Whether ``view`` keeps each of ``fields`` as it is, and nothing else, of a job
    holding them all (each with its own value) and one field nobody reads."""
    job = {**{name: f"value of {name}" for name in sorted(fields)}, "unread after acceptance": "x"}
    return view(job) == {name: job[name] for name in fields}


class TestAdaptersReadOnlyTheirView:
    @pytest.mark.parametrize("vendor", sorted(ADAPTERS))
    def test_poll_and_cancel_read_exactly_what_poll_view_keeps(self, vendor: str) -> None:
        cls = ADAPTERS[vendor]
        reads = job_reads(source_of(cls), cls.__name__)

        assert reads.unknown == [], "a use of the job body the check cannot follow: make it a field read"
        assert keeps_exactly(cls.poll_view, reads.fields), f"poll and cancel read {sorted(reads.fields)}"


ADAPTER = """
import json

def facility_of(job, conn):
    return job.get("facility") or conn

def correlation(spec):
    return spec.correlation_id or spec.request_id

class Adapter:
    async def submit(self, spec):
        return json.dumps(spec.job)

    async def poll(self, spec, job_id):
        return await self._get(job_id, headers=self._headers(spec=spec), fmt=self._format(spec.job))

    def _headers(self, spec):
        return {"Facility": facility_of(spec.job, None), "Id": correlation(spec)}

    @staticmethod
    def _format(job):
        return job["filetype"]

    async def cancel(self, spec, job_id):
        return spec.request_id
"""


class TestTheCheckFindsReads:
    def test_reads_through_methods_static_methods_functions_and_keywords_are_found(self) -> None:
        reads = job_reads(ADAPTER, "Adapter")
        assert reads.fields == {"facility", "filetype"}
        assert reads.unknown == []

    def test_submit_is_not_followed(self) -> None:
        assert job_reads(ADAPTER, "Adapter", entries=("submit",)).unknown != []
        assert job_reads(ADAPTER, "Adapter").unknown == []

    @pytest.mark.parametrize(
        "use",
        [
            "json.dumps(spec.job)",  # the whole body
            "dict(spec.job)",
            "self.http.call(spec)",  # the spec handed to code outside the module
            "[spec.job.get(k) for k in ('a', 'b')]",  # a field name the check cannot see
        ],
    )
    def test_a_use_it_cannot_follow_is_reported(self, use: str) -> None:
        source = ADAPTER.replace("return spec.request_id", f"return {use}")
        assert job_reads(source, "Adapter").unknown != []

    def test_a_view_missing_a_field_read_or_keeping_more_fails_the_check(self) -> None:
        fields = job_reads(ADAPTER, "Adapter").fields
        assert keeps_exactly(lambda job: kept(job, ("facility", "filetype")), fields)
        assert not keeps_exactly(lambda job: kept(job, ("facility",)), fields)
        assert not keeps_exactly(lambda job: job, fields)
