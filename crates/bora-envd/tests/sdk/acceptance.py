"""Acceptance test: the official E2B Python SDK (`pip install e2b`), unchanged,
driving a Bora envd.

Usage: python acceptance.py <open envd URL> <default user's home> \
           <token envd URL> <its access token>

Phase 1 uses the SDK's debug mode (`debug=True`), which skips E2B's control
API and talks to the envd at `sandbox_url` directly (the way it talks to
envd through E2B's proxy otherwise); it then claims the newest envd version,
so every feature the SDK gates on the version is exercised.

Phase 2 runs the SDK's normal mode against a fake control API served here,
which answers like E2B's API (and like Bora's control plane must): it hands
out the second envd's access token and calls that envd's `/init` the way
an orchestrator does. This checks the token flow end to end and records the
control-API calls the SDK makes. Exits non-zero on the first failure.
"""

import asyncio
import io
import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from e2b import AsyncSandbox, CommandExitException, FileType, PtySize, Sandbox
from e2b.exceptions import NotFoundException

URL = sys.argv[1]
HOME = sys.argv[2]
TOKEN_URL = sys.argv[3]
TOKEN = sys.argv[4]
ENVD_VERSION = "0.6.4"


def check(cond, what):
    if not cond:
        raise AssertionError(what)
    print(f"ok: {what}", flush=True)


def sync_suite():
    sbx = Sandbox.create(debug=True, sandbox_url=URL)
    check(sbx.is_running(), "is_running (GET /health)")

    r = sbx.commands.run("echo hello && python3 -c 'print(6*7)' && echo err >&2")
    check(r.exit_code == 0 and r.stdout == "hello\n42\n", f"commands.run stdout {r.stdout!r}")
    check(r.stderr == "err\n", f"commands.run stderr {r.stderr!r}")

    try:
        sbx.commands.run("echo out; exit 3")
        check(False, "failing command raises")
    except CommandExitException as e:
        check(e.exit_code == 3 and e.stdout == "out\n", "CommandExitException carries exit code 3")

    r = sbx.commands.run("id -u")
    check(r.stdout.strip() != "0", f"default user is not root (uid {r.stdout.strip()})")
    r = sbx.commands.run("id -u; echo $HOME", user="root")
    check(r.stdout == "0\n/root\n", f"user='root' runs as root: {r.stdout!r}")
    r = sbx.commands.run("echo $GREETING; pwd", envs={"GREETING": "hej"}, cwd="/tmp")
    check(r.stdout == "hej\n/tmp\n", f"envs and cwd: {r.stdout!r}")

    chunks = []
    sbx.commands.run("for i in 1 2 3; do echo $i; sleep 0.05; done", on_stdout=chunks.append)
    check("".join(chunks) == "1\n2\n3\n", f"on_stdout callback: {chunks!r}")

    h = sbx.commands.run("sleep 30", background=True)
    check(any(p.pid == h.pid for p in sbx.commands.list()), "commands.list shows a background command")
    check(sbx.commands.kill(h.pid), "commands.kill")
    try:
        h.wait()
        check(False, "killed command raises")
    except CommandExitException as e:
        check(e.exit_code == -1, f"killed command ends with exit code -1 ({e.error})")
    check(not sbx.commands.kill(h.pid), "kill of a finished command returns False")

    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.send_stdin(h.pid, "via stdin\n")
    sbx.commands.close_stdin(h.pid)
    check(h.wait().stdout == "via stdin\n", "send_stdin + close_stdin")

    h = sbx.commands.run("cat", background=True, stdin=True)
    sbx.commands.stream_input(h.pid, ["a", b"b", "c\n"])
    sbx.commands.close_stdin(h.pid)
    check(h.wait().stdout == "abc\n", "stream_input (client streaming)")

    h = sbx.commands.run("read x; echo got $x", background=True, stdin=True)
    h.disconnect()
    h2 = sbx.commands.connect(h.pid)
    sbx.commands.send_stdin(h.pid, "back\n")
    check(h2.wait().stdout == "got back\n", "disconnect + connect re-attaches")

    # files
    info = sbx.files.write("sdk/dir/hello.txt", "content")
    check(info.path == f"{HOME}/sdk/dir/hello.txt", f"files.write path {info.path}")
    check(sbx.files.read("sdk/dir/hello.txt") == "content", "files.read text")
    check(sbx.files.read("sdk/dir/hello.txt", format="bytes") == bytearray(b"content"), "files.read bytes")
    sbx.files.write("sdk/stream.bin", io.BytesIO(b"\x00\x01" * 50000))
    check(len(sbx.files.read("sdk/stream.bin", format="bytes")) == 100000, "streamed (octet-stream) write")
    sbx.files.write("sdk/gz.txt", "zipped", gzip=True)
    check(sbx.files.read("sdk/gz.txt", gzip=True) == "zipped", "gzip write and read")
    infos = sbx.files.write_files([
        {"path": "sdk/multi/a.txt", "data": "A"},
        {"path": "/tmp/sdk-multi-b.txt", "data": b"B"},
    ])
    check(len(infos) == 2 and sbx.files.read("/tmp/sdk-multi-b.txt") == "B", "write_files (multipart)")
    sbx.files.write("sdk/meta.txt", "m", metadata={"owner": "alice"})
    meta = sbx.files.get_info("sdk/meta.txt").metadata
    check(meta in ({"owner": "alice"}, None), f"metadata round trip {meta}")

    entry = sbx.files.get_info("sdk/dir/hello.txt")
    check(entry.type == FileType.FILE and entry.size == 7, f"get_info {entry}")
    names = sorted(e.name for e in sbx.files.list("sdk"))
    check(names == ["dir", "gz.txt", "meta.txt", "multi", "stream.bin"], f"files.list {names}")
    deep = [e.path for e in sbx.files.list("sdk", depth=3)]
    check(f"{HOME}/sdk/dir/hello.txt" in deep, "files.list depth")
    check(sbx.files.exists("sdk/dir") and not sbx.files.exists("sdk/nope"), "files.exists")
    check(sbx.files.make_dir("sdk/new") is True, "make_dir creates")
    check(sbx.files.make_dir("sdk/new") is False, "make_dir of an existing dir is False")
    moved = sbx.files.rename("sdk/dir/hello.txt", "sdk/new/moved.txt")
    check(moved.path == f"{HOME}/sdk/new/moved.txt", "files.rename")
    try:
        sbx.files.read("sdk/dir/hello.txt")
        check(False, "reading a moved file fails")
    except NotFoundException:
        check(True, "reading a missing file raises NotFoundException")
    owner = sbx.commands.run("stat -c %U sdk/new/moved.txt").stdout.strip()
    check(owner == sbx.commands.run("id -un").stdout.strip(), f"uploaded file owned by the user ({owner})")

    w = sbx.files.watch_dir("sdk", recursive=True)
    sbx.files.write("sdk/new/watched.txt", "w")
    events = []
    for _ in range(50):
        events += w.get_new_events()
        if any(e.name.endswith("watched.txt") for e in events):
            break
        time.sleep(0.1)
    w.stop()
    check(any(e.name == "new/watched.txt" for e in events), f"watch_dir events {events}")

    sbx.files.remove("sdk")
    check(not sbx.files.exists("sdk"), "files.remove")

    # PTY
    out = bytearray()
    pty = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.send_stdin(pty.pid, b"stty size; exit\n")
    pty.wait(on_pty=out.extend)
    check(b"24 80" in out, f"pty size seen by stty: {bytes(out)[-200:]!r}")

    download = sbx.download_url("x.txt")
    check(download.startswith(URL), f"download_url {download}")
    sbx.kill()


async def async_suite():
    sbx = await AsyncSandbox.create(debug=True, sandbox_url=URL)
    r = await sbx.commands.run("echo async")
    check(r.stdout == "async\n", "async commands.run")
    await sbx.files.write("async.txt", "A")
    check(await sbx.files.read("async.txt") == "A", "async files round trip")
    await sbx.files.remove("async.txt")


CALLS = []


class FakeControlApi(BaseHTTPRequestHandler):
    """E2B's control API, as little of it as the SDK needs."""

    def log_message(self, *args):
        pass

    def _reply(self, status, body=None, headers=None):
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        if body is not None:
            self.send_header("content-type", "application/json")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self):
        n = int(self.headers.get("content-length") or 0)
        return json.loads(self.rfile.read(n) or b"null")

    def _sandbox(self, template="base"):
        return {"templateID": template, "sandboxID": "sbx-1", "clientID": "bora",
                "envdVersion": ENVD_VERSION, "envdAccessToken": TOKEN}

    def do_POST(self):
        body = self._body()
        CALLS.append(("POST", self.path, body, self.headers.get("x-api-key")))
        if self.path == "/v2/sandboxes":
            # What an orchestrator does once the sandbox is up.
            init = urllib.request.Request(
                f"{TOKEN_URL}/init", method="POST",
                data=json.dumps({"envVars": body.get("envVars") or {}, "accessToken": TOKEN}).encode(),
                headers={"content-type": "application/json", "x-access-token": TOKEN})
            urllib.request.urlopen(init).close()
            self._reply(201, self._sandbox(body["templateID"]))
        elif self.path == "/v2/sandboxes/sbx-1/connect":
            self._reply(200, self._sandbox())
        elif self.path in ("/sandboxes/sbx-1/timeout", "/sandboxes/sbx-1/pause"):
            self._reply(204)
        else:
            self._reply(404, {"code": 404, "message": f"no route {self.path}"})

    def do_DELETE(self):
        CALLS.append(("DELETE", self.path, None, self.headers.get("x-api-key")))
        self._reply(204 if self.path == "/sandboxes/sbx-1" else 404)

    def do_GET(self):
        CALLS.append(("GET", self.path, None, self.headers.get("x-api-key")))
        if self.path.startswith("/v2/sandboxes"):
            listed = dict(self._sandbox(), startedAt="2026-01-01T00:00:00Z", endAt="2026-01-01T01:00:00Z",
                          cpuCount=2, memoryMB=512, diskSizeMB=1024, state="running")
            self._reply(200, [listed])
        else:
            self._reply(404, {"code": 404, "message": f"no route {self.path}"})


def api_suite():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeControlApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}"
    opts = dict(api_key="bora_test_key", api_url=api, sandbox_url=TOKEN_URL)

    try:
        Sandbox.create(debug=True, sandbox_url=TOKEN_URL).commands.run("true")
        check(False, "envd with a token refuses requests without it")
    except Exception as e:
        check("access token" in str(e), f"requests without the token are refused ({type(e).__name__})")

    sbx = Sandbox.create("my-template", timeout=120, envs={"FROM_CREATE": "1"}, **opts)
    check(sbx.sandbox_id == "sbx-1", "Sandbox.create through the control API")
    r = sbx.commands.run("echo $FROM_CREATE; id -un")
    check(r.stdout.startswith("1\n"), f"token accepted; create envs reached envd via /init: {r.stdout!r}")
    sbx.files.write("api.txt", "with token")
    check(sbx.files.read("api.txt") == "with token", "files with the token")
    sbx.files.remove("api.txt")
    sbx.set_timeout(300)
    again = Sandbox.connect("sbx-1", **opts)
    check(again.commands.run("echo again").stdout == "again\n", "Sandbox.connect")
    listed = Sandbox.list(**opts).next_items()
    check([s.sandbox_id for s in listed] == ["sbx-1"], "Sandbox.list")
    check(sbx.pause() is True, "pause")
    sbx.kill()
    server.shutdown()

    routes = [(m, p.split("?")[0]) for m, p, _, _ in CALLS]
    check(routes == [
        ("POST", "/v2/sandboxes"),
        ("POST", "/sandboxes/sbx-1/timeout"),
        ("POST", "/v2/sandboxes/sbx-1/connect"),
        ("GET", "/v2/sandboxes"),
        ("POST", "/sandboxes/sbx-1/pause"),
        ("DELETE", "/sandboxes/sbx-1"),
    ], f"control API calls {routes}")
    check(all(k == "bora_test_key" for *_, k in CALLS), "every control API call carries X-API-Key")
    create = CALLS[0][2]
    check(create["templateID"] == "my-template" and create["timeout"] == 120
          and create["envVars"] == {"FROM_CREATE": "1"}, f"create body {create}")
    check(CALLS[1][2] == {"timeout": 300}, f"timeout body {CALLS[1][2]}")
    for call in CALLS:
        print("control API call:", json.dumps(call[:3]), flush=True)


sync_suite()
asyncio.run(async_suite())
api_suite()
print("SDK ACCEPTANCE PASSED")
