"""Records the store set aside, seen and dropped through a node: ListCorrupt, DropCorrupt, ``jobctl corrupt``.

The node runs in the test's process on a :class:`SetAsideStore` (a store double reporting two records
set aside); jobctl runs as a subprocess against it, as in test_jobctl.py.
"""

from __future__ import annotations

import json
import subprocess
from functools import partial

import anyio
import gojob_core as gojob
import pytest
from gojob_core.abc import CorruptRecord
from grpc_nodes import FAILURE, OK, UNAVAILABLE, USAGE, Node, jobctl
from set_aside_store import CUT_SHORT, GARBAGE_ENTRY, SetAsideStore

from gojob_grpc import Client, InvalidArgumentError, ServerPlugin, UnauthenticatedError, UnavailableError

TOKEN = "corrupt-t0ken"
#: how the lone surrogate of GARBAGE_ENTRY travels (a protobuf string must be valid UTF-8)
GARBAGE_RAW = "caf\xe9 \\udcff!"


async def run_jobctl(target: str, *args: str, token: str | None = TOKEN) -> subprocess.CompletedProcess[str]:
    """``jobctl`` in a thread, so that the node on this event loop keeps serving meanwhile."""
    return await anyio.to_thread.run_sync(partial(jobctl, *(["--token", token] if token else []), *args,
                                                  target=target))


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == OK, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {proc.stderr}"
    return proc.stdout


async def test_client_lists_and_drops_set_aside_records() -> None:
    store = SetAsideStore()
    plugin = ServerPlugin(listen="127.0.0.1:0", token=TOKEN)
    async with gojob.Manager(store, plugins=[plugin]):
        assert plugin.server is not None
        async with Client(plugin.server.address, token=TOKEN) as c:
            records = await c.corrupt_records()
            assert records == [CUT_SHORT, CorruptRecord(GARBAGE_ENTRY.key, GARBAGE_ENTRY.reason, GARBAGE_RAW)]
            assert all(isinstance(r, CorruptRecord) for r in records)
            assert [r.raw for r in await c.corrupt_records(raw_limit=5)] == [CUT_SHORT.raw[:5], GARBAGE_RAW[:5]]
            for bad in (0, -1, True, 2**32, 1.5):
                with pytest.raises(ValueError, match="raw_limit"):
                    await c.corrupt_records(raw_limit=bad)  # type: ignore[arg-type]

            assert await c.drop_corrupt_record(GARBAGE_ENTRY.key) is True
            assert store.dropped == [GARBAGE_ENTRY.key]
            assert await c.corrupt_records() == [CUT_SHORT]
            assert await c.drop_corrupt_record(GARBAGE_ENTRY.key) is False  # already gone: nothing changes
            assert await c.drop_corrupt_record("gojob:no-such-key") is False
            with pytest.raises(InvalidArgumentError) as info:
                await c.drop_corrupt_record(" ")
            assert info.value.field == "key" and "key: the key of a corrupt record is required" in str(info.value)
            with pytest.raises(TypeError):
                await c.drop_corrupt_record(None)  # type: ignore[arg-type]
            assert store.dropped == [GARBAGE_ENTRY.key]

        # the same token check as every other call: without it, nothing is read or dropped
        async with Client(plugin.server.address) as anonymous:
            with pytest.raises(UnauthenticatedError):
                await anonymous.corrupt_records()
            with pytest.raises(UnauthenticatedError):
                await anonymous.drop_corrupt_record(CUT_SHORT.key)
        assert store.dropped == [GARBAGE_ENTRY.key]


class FailingStore(gojob.MemoryStore):
    async def corrupt_records(self) -> list[CorruptRecord]:
        raise gojob.StoreError("connection refused")


async def test_a_store_failure_is_unavailable() -> None:
    plugin = ServerPlugin(listen="127.0.0.1:0")
    async with gojob.Manager(FailingStore(), plugins=[plugin]):
        assert plugin.server is not None
        async with Client(plugin.server.address) as c:
            with pytest.raises(UnavailableError, match="the store failed: connection refused"):
                await c.corrupt_records()
            assert await c.drop_corrupt_record("k") is False  # the contract's default: nothing set aside
        proc = await run_jobctl(plugin.server.address, "corrupt", token=None)
        assert proc.returncode == UNAVAILABLE and "UNAVAILABLE" in proc.stderr and "connection refused" in proc.stderr


async def test_jobctl_corrupt() -> None:
    store = SetAsideStore()
    plugin = ServerPlugin(listen="127.0.0.1:0", token=TOKEN)
    async with gojob.Manager(store, plugins=[plugin]):
        assert plugin.server is not None
        target = plugin.server.address

        # the table: one line per record, raw shortened and on one line
        lines = ok(await run_jobctl(target, "corrupt")).splitlines()
        assert lines[0].split() == ["KEY", "REASON", "RAW"] and len(lines) == 3
        cut, garbage = lines[1], lines[2]
        assert cut.startswith(CUT_SHORT.key) and CUT_SHORT.reason in cut
        assert cut.endswith(CUT_SHORT.raw.replace("\n", "\\n").replace("\x00", "\\x00")[:60] + "...")
        assert garbage.startswith(GARBAGE_ENTRY.key) and GARBAGE_ENTRY.reason in garbage
        assert garbage.endswith("  caf\xe9 \\udcff!")

        # --json: every record with all of its raw content
        listed = json.loads(ok(await run_jobctl(target, "corrupt", "--json")))
        assert listed == [{"key": CUT_SHORT.key, "reason": CUT_SHORT.reason, "raw": CUT_SHORT.raw},
                          {"key": GARBAGE_ENTRY.key, "reason": GARBAGE_ENTRY.reason, "raw": GARBAGE_RAW}]

        # --drop: exit 0 once, then 1 with a message saying there is no such record
        assert ok(await run_jobctl(target, "corrupt", "--drop", CUT_SHORT.key)).strip() == \
            f"dropped corrupt record {CUT_SHORT.key}"
        assert store.dropped == [CUT_SHORT.key]
        again = await run_jobctl(target, "corrupt", "--drop", CUT_SHORT.key)
        assert again.returncode == FAILURE and again.stdout == ""
        assert f"jobctl corrupt: no corrupt record '{CUT_SHORT.key}' is set aside in the store" in again.stderr
        as_json = await run_jobctl(target, "corrupt", "--drop", "nope", "--json")
        assert as_json.returncode == FAILURE and json.loads(as_json.stdout) == {"key": "nope", "dropped": False}
        empty = await run_jobctl(target, "corrupt", "--drop", "")
        assert empty.returncode == USAGE and "INVALID_ARGUMENT: key: " in empty.stderr

        # without the token: refused, nothing dropped
        refused = await run_jobctl(target, "corrupt", "--drop", GARBAGE_ENTRY.key, token=None)
        assert refused.returncode == UNAVAILABLE and "UNAUTHENTICATED" in refused.stderr
        assert store.dropped == [CUT_SHORT.key]

        assert ok(await run_jobctl(target, "corrupt", "--drop", GARBAGE_ENTRY.key, "--json")) and \
            store.dropped == [CUT_SHORT.key, GARBAGE_ENTRY.key]
        none_left = await run_jobctl(target, "corrupt")
        assert none_left.returncode == OK and none_left.stdout == "" and "no corrupt records" in none_left.stderr
        assert json.loads(ok(await run_jobctl(target, "corrupt", "--json"))) == []


def test_jobctl_corrupt_on_a_node_with_nothing_set_aside(node: Node) -> None:
    """A ``gojob serve`` node on the memory store: nothing set aside, nothing to drop."""
    listed = node.jobctl("corrupt")
    assert listed.returncode == OK and listed.stdout == "" and "no corrupt records" in listed.stderr
    assert json.loads(ok(node.jobctl("corrupt", "--json"))) == []
    dropped = node.jobctl("corrupt", "--drop", "gojob:i:whatever")
    assert dropped.returncode == FAILURE and "no corrupt record 'gojob:i:whatever'" in dropped.stderr


def test_the_proto_and_the_stubs_agree() -> None:
    """The committed stubs were regenerated from the .proto (tox -e proto): the new calls are in both."""
    from pathlib import Path

    import gojob_grpc
    from gojob_grpc.proto.gojob.v1 import jobs_pb2 as pb
    from gojob_grpc.proto.gojob.v1 import jobs_pb2_grpc as pb_grpc

    proto = (Path(gojob_grpc.__file__).parent / "proto" / "gojob" / "v1" / "jobs.proto").read_text()
    service = pb.DESCRIPTOR.services_by_name["JobService"]
    for name in ("ListCorrupt", "DropCorrupt"):
        assert f"rpc {name}(" in proto and name in service.methods_by_name and hasattr(pb_grpc.JobServiceServicer, name)
