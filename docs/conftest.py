"""The user guide's code blocks run as tests (sybil), in order, in one namespace, so the guide cannot drift
from the code.

Each page gets a running ``mgr`` (a Manager on the memory store, on an event loop in a background thread)
and the few names its examples take for granted; blocks may ``await`` at top level. A block that needs
what a test cannot have (a server elsewhere, a real secret) is marked ``<!-- skip: next -->`` in the page;
context a reader does not need to see is set up in ``<!-- invisible-code-block: python -->`` comments.
"""

from __future__ import annotations

import ast
import contextlib
import inspect
from typing import Any

import anyio
import anyio.from_thread
from sybil import Example, Sybil
from sybil.parsers.markdown import CodeBlockParser, SkipParser


def _evaluate(example: Example) -> None:
    ns = example.namespace
    source = "\n" * (example.line - 1) + example.parsed  # errors point at the page's own lines
    code = compile(source, example.path, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT, dont_inherit=True)
    if code.co_flags & inspect.CO_COROUTINE:
        ns["_portal"].call(lambda: eval(code, ns))
    else:
        exec(code, ns)


async def _run_manager(stop: anyio.Event, *, task_status: Any) -> None:
    import gojob_core as gojob

    async with gojob.Manager(store="memory://", num_workers=4, node_id="guide") as mgr:
        task_status.started(mgr)
        await stop.wait()


def _setup(namespace: dict[str, Any]) -> None:
    stack = contextlib.ExitStack()
    portal = stack.enter_context(anyio.from_thread.start_blocking_portal())
    stop = portal.call(anyio.Event)
    future, mgr = portal.start_task(_run_manager, stop)
    stack.callback(future.result, 30)
    stack.callback(portal.call, stop.set)
    namespace.update(_portal=portal, _stack=stack, mgr=mgr, _started_mgr=mgr)


def _teardown(namespace: dict[str, Any]) -> None:
    namespace["_stack"].close()


pytest_collect_file = Sybil(
    parsers=[CodeBlockParser(language="python", evaluator=_evaluate), SkipParser()],
    patterns=["user-guide.md"],
    setup=_setup,
    teardown=_teardown,
).pytest()
