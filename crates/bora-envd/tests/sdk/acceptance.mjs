// Acceptance test: the official E2B JavaScript SDK (`npm install e2b`),
// unchanged, driving a Bora envd in the SDK's debug mode (no control API).
// Usage: node acceptance.mjs <envd base URL>   (run where `e2b` resolves)
import { Sandbox, CommandExitError } from 'e2b'

const url = process.argv[2]
const check = (cond, what) => {
  if (!cond) throw new Error(`FAILED: ${what}`)
  console.log(`ok: ${what}`)
}

const sbx = await Sandbox.create({ debug: true, sandboxUrl: url })
check(await sbx.isRunning(), 'isRunning')

let r = await sbx.commands.run('echo hello && echo err >&2')
check(r.exitCode === 0 && r.stdout === 'hello\n' && r.stderr === 'err\n', `commands.run ${JSON.stringify(r)}`)
try {
  await sbx.commands.run('exit 4')
  check(false, 'failing command throws')
} catch (e) {
  check(e instanceof CommandExitError && e.exitCode === 4, `CommandExitError exit code ${e.exitCode}`)
}
r = await sbx.commands.run('id -u', { user: 'root' })
check(r.stdout === '0\n', 'user root')
r = await sbx.commands.run('echo $X; pwd', { envs: { X: 'y' }, cwd: '/tmp' })
check(r.stdout === 'y\n/tmp\n', `envs and cwd ${JSON.stringify(r.stdout)}`)

const h = await sbx.commands.run('sleep 30', { background: true })
check((await sbx.commands.list()).some((p) => p.pid === h.pid), 'commands.list')
check(await sbx.commands.kill(h.pid), 'commands.kill')

const cat = await sbx.commands.run('cat', { background: true, stdin: true })
await sbx.commands.sendStdin(cat.pid, 'from js\n')
await sbx.commands.closeStdin(cat.pid)
check((await cat.wait()).stdout === 'from js\n', 'sendStdin + closeStdin')

await sbx.files.write('js/hello.txt', 'js content')
check((await sbx.files.read('js/hello.txt')) === 'js content', 'files write/read')
check((await sbx.files.list('js')).map((e) => e.name).join() === 'hello.txt', 'files.list')
const info = await sbx.files.getInfo('js/hello.txt')
check(info.size === 7 + 3 && info.type === 'file', `getInfo ${JSON.stringify(info)}`)
check(await sbx.files.makeDir('js/sub'), 'makeDir')
await sbx.files.rename('js/hello.txt', 'js/sub/moved.txt')
check(await sbx.files.exists('js/sub/moved.txt'), 'rename + exists')

const events = []
const w = await sbx.files.watchDir('js', (e) => events.push(e), { recursive: true })
await sbx.files.write('js/sub/watched.txt', 'w')
for (let i = 0; i < 50 && !events.some((e) => e.name.endsWith('watched.txt')); i++) {
  await new Promise((res) => setTimeout(res, 100))
}
await w.stop()
check(events.some((e) => e.name === 'sub/watched.txt'), `watchDir ${JSON.stringify(events)}`)
await sbx.files.remove('js')
check(!(await sbx.files.exists('js')), 'remove')

let out = ''
const pty = await sbx.pty.create({ cols: 90, rows: 20, onData: (d) => { out += new TextDecoder().decode(d) } })
await sbx.pty.sendInput(pty.pid, new TextEncoder().encode('stty size; exit\n'))
await pty.wait()
check(out.includes('20 90'), 'pty')
console.log('JS SDK ACCEPTANCE PASSED')
