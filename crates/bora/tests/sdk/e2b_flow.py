"""The E2B SDK flow of issue 4, against a Bora server.

Run by crates/bora/tests/sandboxes.rs with only E2B_API_URL,
E2B_SANDBOX_URL and E2B_API_KEY set. Prints one line per step; any failed
assertion exits non-zero with the reason.
"""

from e2b import Sandbox

sbx = Sandbox.create(timeout=120)
print("created", sbx.sandbox_id)

r = sbx.commands.run("echo hello && python3 -c 'print(6*7)'")
assert r.stdout == "hello\n42\n" and r.exit_code == 0, (r.stdout, r.stderr, r.exit_code)
print("ran", repr(r.stdout))

who = sbx.commands.run("id -un && echo $HOME && pwd")
assert who.stdout == "user\n/home/user\n/home/user\n", who.stdout
root = sbx.commands.run("id -un", user="root")
assert root.stdout == "root\n", root.stdout
print("users ok")

sbx.files.write("/home/user/a.txt", "data")
assert sbx.files.read("/home/user/a.txt") == "data"
names = [e.name for e in sbx.files.list("/home/user")]
assert "a.txt" in names, names
# coreutils' ls and stat use statx(AT_NO_AUTOMOUNT), which gVisor before
# 2023 refused ("Invalid argument"): they must work in a sandbox.
ls = sbx.commands.run("ls /home/user && stat -c '%U %s' /home/user/a.txt")
assert ls.stdout == "a.txt\nuser 4\n", (ls.stdout, ls.stderr)
print("files", names)

h = sbx.commands.run("sleep 30", background=True)
assert h.kill()
print("killed background command")

listed = [s.sandbox_id for s in Sandbox.list().next_items()]
assert sbx.sandbox_id in listed, listed

sbx.set_timeout(300)
assert sbx.is_running()
sbx.kill()
listed = [s.sandbox_id for s in Sandbox.list().next_items()]
assert sbx.sandbox_id not in listed, listed
# The router answers a gone sandbox as E2B's proxy does (502 "was not found").
assert not sbx.is_running()
print("ok")
