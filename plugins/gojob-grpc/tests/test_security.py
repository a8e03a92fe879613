"""Token and TLS, end to end: a node started with --tls-cert/--tls-key and --token-file."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_nodes import OK, UNAVAILABLE, Node, NodeFactory, child_env

from gojob_grpc import Client, UnauthenticatedError, UnavailableError
from gojob_grpc._server import DEFAULT_LISTEN, JobServer, ServerPlugin

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
def secure_node(tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[str, str]) -> Iterator[Node]:
    factory = NodeFactory(tmp_path_factory.mktemp("secure"))
    try:
        yield factory(name="secure", tls=tls_files, token=TOKEN)
    finally:
        factory.close()


def test_tls_and_token_accepted(secure_node: Node) -> None:
    health = secure_node.jobctl("health", "--json")
    assert health.returncode == OK, health.stderr
    assert json.loads(health.stdout)["node_id"] == "secure"
    assert " tls token," in secure_node.output()  # the ready line says how it serves
    # GOJOB_TOKEN stands in for --token
    env = child_env(GOJOB_TOKEN=TOKEN)
    via_env = secure_node.jobctl("--tls-ca", secure_node.tls_ca or "", "workers", env=env, auth=False)
    assert via_env.returncode == OK, via_env.stderr


def test_missing_or_wrong_token_is_refused_and_does_nothing(secure_node: Node) -> None:
    tls = ["--tls-ca", secure_node.tls_ca or ""]
    for extra in ([], ["--token", "wrong-token"], ["--token", TOKEN + "x"], ["--token", TOKEN[:-1]]):
        proc = secure_node.jobctl(*tls, *extra, "schedule", "sum", "1", "2", auth=False)
        assert proc.returncode == UNAVAILABLE, proc.stderr
        assert "UNAUTHENTICATED" in proc.stderr and "token" in proc.stderr
    listed = secure_node.jobctl("instances", "--kind", "sum", "--json")
    assert listed.returncode == OK and json.loads(listed.stdout) == []  # nothing was scheduled
    assert "refused a call to /gojob.v1.JobService/Schedule" in secure_node.output()


def test_plain_text_client_cannot_talk_to_a_tls_node(secure_node: Node) -> None:
    proc = secure_node.jobctl("--token", TOKEN, "health", "--rpc-timeout", "5", auth=False)
    assert proc.returncode == UNAVAILABLE and "UNAVAILABLE" in proc.stderr


async def test_python_client_with_tls_and_token(secure_node: Node) -> None:
    assert secure_node.tls_ca is not None
    async with Client(secure_node.target, token=TOKEN, tls=secure_node.tls_ca) as c:
        inst = await c.schedule("sum", (2, 3))
        assert (await c.wait(inst, timeout=10)).result == 5
    # the certificate is also accepted as bytes, and checked against the name given
    pem = Path(secure_node.tls_ca).read_bytes()
    port = secure_node.target.rsplit(":", 1)[1]
    async with Client(f"localhost:{port}", token=TOKEN, tls=pem, tls_server_name="localhost") as c:
        assert (await c.health()).node_id == "secure"
    async with Client(secure_node.target, token="nope", tls=pem) as c:
        with pytest.raises(UnauthenticatedError) as info:
            await c.lookup_instances()
        assert info.value.code is grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(UnauthenticatedError):
            async with c.watch_instances():
                pass
    async with Client(secure_node.target, token=TOKEN, tls=pem, tls_server_name="not-the-name", timeout=5) as c:
        with pytest.raises(UnavailableError):
            await c.health()


def test_loopback_by_default_and_option_checks(tmp_path: Path) -> None:
    import gojob_core as gojob

    mgr = gojob.Manager("memory://", autoload_plugins=False)
    assert DEFAULT_LISTEN == "127.0.0.1:50051" and JobServer(mgr).address == "127.0.0.1:50051"
    assert ServerPlugin().options["listen"] == "127.0.0.1:50051"
    for bad, text in ((dict(listen="50051"), "host:port"), (dict(listen="[::1]"), "host:port"),
                      (dict(token="has space"), "visible ASCII"), (dict(tls_cert="c.pem"), "both"),
                      (dict(metrics="nowhere"), "metrics address")):
        with pytest.raises(ValueError, match=text):
            ServerPlugin(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot read the TLS certificate"):
        JobServer(mgr, tls_cert=tmp_path / "missing.pem", tls_key=tmp_path / "missing.key")


def test_serve_refuses_bad_options(nodes: NodeFactory, tmp_path: Path) -> None:
    import subprocess

    from grpc_nodes import GOJOB

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*GOJOB, "serve", *args], capture_output=True, text=True, env=child_env(), timeout=60,
                              cwd=tmp_path)

    (tmp_path / "empty.token").write_text("\n")
    for args, code, text in (
            (["--jobs", "sample_jobs", "--listen", "nowhere"], 2, "host:port"),
            (["--jobs", "no_such_module_here"], 2, "no such module"),
            (["--jobs", "sample_jobs", "--store", "nosuch://x"], 2, "no store plugin for scheme 'nosuch'"),
            (["--jobs", "sample_jobs", "--tls-cert", "x.pem"], 2, "both --tls-cert and --tls-key"),
            (["--jobs", "sample_jobs", "--token-file", "empty.token"], 2, "is empty"),
            (["--jobs", "sample_jobs", "--workers", "-1"], 2, "--workers"),
            (["--jobs", "sample_jobs", "--metrics-interval", "0"], 2, "--metrics-interval must be a positive"),
            (["--jobs", "sample_jobs", "--lease-time", "-3"], 2, "--lease-time must be a positive"),
            ([], 2, "--jobs"),
    ):
        proc = serve(*args)
        assert proc.returncode == code and text in proc.stderr, (args, proc.returncode, proc.stderr)
    # a busy port: the second node fails to start (SO_REUSEPORT is off), the first keeps serving
    first = nodes(name="first")
    busy = serve("--jobs", "sample_jobs", "--listen", first.target)
    assert busy.returncode == 1 and "cannot listen on" in busy.stderr
    assert first.jobctl("health").returncode == OK


def test_serve_reports_a_jobs_module_that_fails_to_import(tmp_path: Path) -> None:
    import subprocess

    from grpc_nodes import GOJOB

    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*GOJOB, "serve", *args], capture_output=True, text=True, env=child_env(), timeout=60,
                              cwd=tmp_path, stdin=subprocess.DEVNULL)

    app = tmp_path / "app"
    app.mkdir()
    (app / "raising_jobs.py").write_text("import os\n\nCONFIG = os.environ['GOJOB_TEST_NO_SUCH_VARIABLE']\n")
    (app / "syntax_jobs.py").write_text("def job(:\n    pass\n")
    (app / "missing_dep_jobs.py").write_text("\nimport gojob_test_no_such_dependency\n")
    raising, syntax, missing = (str(app / f"{m}_jobs.py") for m in ("raising", "syntax", "missing_dep"))
    for module, where, error in (
            ("raising_jobs", f"{raising}:3", "KeyError: 'GOJOB_TEST_NO_SUCH_VARIABLE'"),
            ("syntax_jobs", f"{syntax}:1", "SyntaxError: invalid syntax"),
            ("missing_dep_jobs", f"{missing}:2",
             "ModuleNotFoundError: No module named 'gojob_test_no_such_dependency'")):
        proc = serve("--jobs", module, "--app-dir", "app")
        # one line: the module, then file:line: ExceptionType: message; no traceback without --debug
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.splitlines() == [f"gojob serve: cannot import --jobs {module!r}: {where}: {error} "
                                            "(--debug shows the traceback)"], proc.stderr
        debug = serve("--jobs", module, "--app-dir", "app", "--debug")
        assert debug.returncode == 1
        assert "Traceback (most recent call last)" in debug.stderr or module == "syntax_jobs", debug.stderr
        assert f'File "{where.rsplit(":", 1)[0]}", line {where.rsplit(":", 1)[1]}' in debug.stderr, debug.stderr
        assert debug.stderr.splitlines()[-1] == f"gojob serve: cannot import --jobs {module!r}: {where}: {error}"
    # a file path instead of a module name: the module name and --app-dir to give instead, before importing
    for args, hint in ((["--jobs", "app/raising_jobs.py"], "--jobs raising_jobs --app-dir app"),
                       (["--jobs", str(app / "raising_jobs.py")], f"--jobs raising_jobs --app-dir {app}"),
                       (["--jobs", "sample_jobs.py"], "--jobs sample_jobs")):
        proc = serve(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.splitlines() == [f"gojob serve: --jobs {args[1]!r} is a file, give its module name: "
                                            f"{hint}"], proc.stderr
