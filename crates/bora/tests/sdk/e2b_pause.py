"""Metadata, env vars, pause and resume with the E2B Python SDK, against a
Bora server.

Run by crates/bora/tests/sandboxes.rs with only E2B_API_URL,
E2B_SANDBOX_URL and E2B_API_KEY set. Bora's own API (for the sandbox's
state as Bora records it) is next to E2B's: E2B_API_URL is `<api>/e2b`.
Prints one line per step; any failed assertion exits non-zero with the
reason.
"""

import json
import os
import urllib.request

from e2b import Sandbox, SandboxQuery, SandboxState

API = os.environ["E2B_API_URL"].removesuffix("/e2b")


def bora_state(sandbox_id):
    req = urllib.request.Request(
        f"{API}/v1/sandboxes/{sandbox_id}",
        headers={"Authorization": f"Bearer {os.environ['E2B_API_KEY']}"},
    )
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)["state"]


def listed(**query):
    return [s.sandbox_id for s in Sandbox.list(query=SandboxQuery(**query)).next_items()]


# The SDKs percent-encode each key and value of a metadata filter: a space
# and an `&` check that the server decodes them.
metadata = {"suite": "bora-e2e", "purpose": "pause & resume"}
sbx = Sandbox.create(timeout=120, metadata=metadata, envs={"FOO": "bar"})
print("created", sbx.sandbox_id)

r = sbx.commands.run("echo $FOO")
assert r.stdout == "bar\n", r.stdout
info = sbx.get_info()
assert info.metadata == metadata, info.metadata
print("env and metadata ok")

found = listed(metadata={"purpose": "pause & resume"})
assert sbx.sandbox_id in found, found
found = listed(metadata={"suite": "bora-e2e", "purpose": "pause & resume"})
assert sbx.sandbox_id in found, found
found = listed(metadata={"purpose": "something else"})
assert sbx.sandbox_id not in found, found
print("listed by metadata")

# A process and a file that must survive the pause.
h = sbx.commands.run("sleep 600", background=True)
pid = h.pid
assert pid in [p.pid for p in sbx.commands.list()], sbx.commands.list()
sbx.files.write("/home/user/kept.txt", "still here")
print("started", pid)

assert sbx.pause() is True
assert bora_state(sbx.sandbox_id) == "paused", bora_state(sbx.sandbox_id)
assert sbx.get_info().state == SandboxState.PAUSED, sbx.get_info().state
assert sbx.sandbox_id in listed(state=[SandboxState.PAUSED])
assert sbx.sandbox_id not in listed(state=[SandboxState.RUNNING])
# A second pause: the SDK reads E2B's 409 as "already paused".
assert sbx.pause() is False
print("paused")

# Another sandbox starting meanwhile rebuilds the router's table: the
# resumed one must be in it again.
other = Sandbox.create(timeout=60)

resumed = Sandbox.connect(sbx.sandbox_id)
assert resumed.sandbox_id == sbx.sandbox_id
assert bora_state(sbx.sandbox_id) == "running", bora_state(sbx.sandbox_id)
pids = [p.pid for p in resumed.commands.list()]
assert pid in pids, (pid, pids)
# Alive, not only listed: it takes signals.
alive = resumed.commands.run(f"kill -0 {pid} && echo alive")
assert alive.stdout == "alive\n", alive.stdout
assert resumed.files.read("/home/user/kept.txt") == "still here"
assert resumed.commands.run("echo $FOO").stdout == "bar\n"
print("resumed with", pid, "alive and the file intact")

# Connecting to a running sandbox leaves it as it is.
again = Sandbox.connect(sbx.sandbox_id)
assert again.commands.run("echo again").stdout == "again\n"

resumed.kill()
other.kill()
assert sbx.sandbox_id not in listed()
print("ok")
