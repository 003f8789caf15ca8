// One stock y-websocket provider (yjs + y-websocket + ws from npm, unchanged) driven by a
// test over stdin/stdout: commands in, one JSON object a line; events and answers out, one
// JSON object a line. tests/yjs/node.py starts it as `node yclient.mjs URL ROOM [TOKEN]`.
//
// Events (no "id"): {"event":"status","status":…}, {"event":"synced"},
// {"event":"close","code":…,"reason":…}, {"event":"awareness","at":<ms since the epoch>,
// "ms":<ms since the provider was made>,"states":{clientID:state}} at every awareness change.
// Commands (answered with {"id":…, …}): insert, delete, edits (random concurrent edits),
// type (append numbers), text, awareness (set the local state), cursor (set user and cursor),
// states, destroy, server (reconnect to another URL from now on), exit.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'
import * as readline from 'node:readline'

const [url, room, token] = process.argv.slice(2)
const started = performance.now()
const doc = new Y.Doc()
const text = doc.getText('text')
const out = (obj) => process.stdout.write(JSON.stringify(obj) + '\n')

const provider = new WebsocketProvider(url, room, doc, {
  WebSocketPolyfill: WebSocket,
  params: token ? { token } : {},
  disableBc: true
})
provider.on('status', ({ status }) => out({ event: 'status', status }))
provider.on('sync', (synced) => { if (synced) out({ event: 'synced' }) })
provider.on('connection-close', (event) => {
  if (event) out({ event: 'close', code: event.code, reason: String(event.reason || '') })
})
const states = () => {
  const all = {}
  for (const [client, state] of provider.awareness.getStates()) {
    if (client !== doc.clientID) all[client] = state
  }
  return all
}
provider.awareness.on('change', () => {
  out({ event: 'awareness', at: Date.now(), ms: performance.now() - started, states: states() })
})

// A small deterministic generator: the same seed makes the same edits.
const random = (seed) => () => {
  seed = (seed * 1103515245 + 12345) % 2147483648
  return seed / 2147483648
}
const PIECES = ['a', 'b', 'ç', '😀', '👩‍💻', '中', '文字', '한', 'ア', ' ', '\n', '🇫🇷', 'x']
// Yjs indices are UTF-16 units: never land inside a surrogate pair.
const aligned = (s, at) => {
  const code = s.charCodeAt(at - 1)
  return at > 0 && code >= 0xd800 && code <= 0xdbff ? at - 1 : at
}

const handlers = {
  insert: ({ index, value }) => { text.insert(index ?? text.length, value); return {} },
  delete: ({ index, length }) => { text.delete(index, length); return {} },
  edits: async ({ count, seed, pause }) => {
    const next = random(seed)
    for (let i = 0; i < count; i++) {
      if (text.length > 0 && next() < 0.25) {
        const s = text.toString()
        const at = aligned(s, Math.floor(next() * s.length))
        text.delete(at, s.codePointAt(at) > 0xffff ? 2 : 1)
      } else {
        const piece = PIECES[Math.floor(next() * PIECES.length)]
        text.insert(aligned(text.toString(), Math.floor(next() * (text.length + 1))), piece)
      }
      if (pause && i % 10 === 9) await new Promise((resolve) => setTimeout(resolve, pause))
    }
    return {}
  },
  type: async ({ count, pause }) => { // appends "0 1 2 …": any prefix is a state it passed
    for (let i = 0; i < count; i++) {
      text.insert(text.length, `${i} `)
      if (pause) await new Promise((resolve) => setTimeout(resolve, pause))
    }
    return {}
  },
  text: () => ({ text: text.toString() }),
  awareness: ({ state }) => { provider.awareness.setLocalState(state); return {} },
  // A cursor as y-codemirror.next and examples/collab show it: `user` {name, color} and `cursor`
  // {anchor, head} as relative positions (JSON) at these indices; answers this client's id.
  cursor: ({ anchor, head, user }) => {
    const at = (index) => Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(text, index))
    const cursor = { anchor: at(anchor), head: at(head ?? anchor) }
    provider.awareness.setLocalState({ ...provider.awareness.getLocalState(), user, cursor })
    return { client: doc.clientID }
  },
  states: () => ({ states: states() }),
  destroy: () => { provider.destroy(); return {} },
  // From now on the provider (re)connects to another node: { url } as argv's URL.
  server: ({ url }) => { provider.serverUrl = url; return {} },
  exit: () => { setTimeout(() => process.exit(0), 10); return {} }
}

readline.createInterface({ input: process.stdin }).on('line', async (line) => {
  const command = JSON.parse(line)
  try {
    out({ id: command.id, ...(await handlers[command.op](command)) })
  } catch (error) {
    out({ id: command.id, error: String(error) })
  }
})
