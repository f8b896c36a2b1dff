// The E2B SDK flow of issue 4 (the same as e2b_flow.py), with the official
// JavaScript SDK, against a Bora server.
//
// Run by crates/bora/tests/sandboxes.rs with only E2B_API_URL,
// E2B_SANDBOX_URL and E2B_API_KEY set, from the directory the SDK is
// installed in (ES modules resolve `e2b` next to the script). Prints one
// line per step; any failed check exits non-zero with the reason.
import { Sandbox } from 'e2b'

const check = (cond, what) => {
  if (!cond) throw new Error(`FAILED: ${what}`)
}
const listed = async () => (await Sandbox.list().nextItems()).map((s) => s.sandboxId)

const sbx = await Sandbox.create({ timeoutMs: 120_000 })
console.log('created', sbx.sandboxId)

const r = await sbx.commands.run("echo hello && python3 -c 'print(6*7)'")
check(r.stdout === 'hello\n42\n' && r.exitCode === 0, `run: ${JSON.stringify(r)}`)
console.log('ran', JSON.stringify(r.stdout))

const who = await sbx.commands.run('id -un && echo $HOME && pwd')
check(who.stdout === 'user\n/home/user\n/home/user\n', `default user: ${JSON.stringify(who.stdout)}`)
const root = await sbx.commands.run('id -un', { user: 'root' })
check(root.stdout === 'root\n', `root: ${JSON.stringify(root.stdout)}`)
console.log('users ok')

await sbx.files.write('/home/user/a.txt', 'data')
check((await sbx.files.read('/home/user/a.txt')) === 'data', 'files.read')
const names = (await sbx.files.list('/home/user')).map((e) => e.name)
check(names.includes('a.txt'), `files.list: ${names}`)
console.log('files', JSON.stringify(names))

const h = await sbx.commands.run('sleep 30', { background: true })
check(await h.kill(), 'background command killed')
console.log('killed background command')

let ids = await listed()
check(ids.includes(sbx.sandboxId), `listed while running: ${ids}`)

await sbx.setTimeout(300_000)
check(await sbx.isRunning(), 'running before the kill')
await sbx.kill()
ids = await listed()
check(!ids.includes(sbx.sandboxId), `listed after kill: ${ids}`)
// The router answers a gone sandbox as E2B's proxy does (502 "was not found").
check(!(await sbx.isRunning()), 'not running after the kill')
console.log('ok')
