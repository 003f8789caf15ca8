// A textarea bound to a Y.Text, shared through hybridbus with the stock y-websocket provider,
// and the other editors' cursors and names drawn over it from awareness.
//
// Plain ES modules, no build step: index.html's import map resolves `yjs`, `y-websocket` and
// their dependencies to tests/js/node_modules (docs/collaboration.md, "In a browser").
//
// Awareness fields follow y-codemirror.next and y-prosemirror, so their editors and this page
// see each other: `user` = {name, color}, `cursor` = {anchor, head} as Yjs relative positions
// (JSON), which stay on the same character while others edit.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const COLORS = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324', '#800000']
const BINDING = Symbol('textarea') // the origin of our own transactions

const isHigh = (code) => code >= 0xd800 && code <= 0xdbff
const isLow = (code) => code >= 0xdc00 && code <= 0xdfff

// The edit that turns `before` into `after`: [index, deleted count, inserted string], in UTF-16
// units as Yjs counts them. Never splits a surrogate pair: Yjs would store U+FFFD for both halves.
export function diff (before, after) {
  const most = Math.min(before.length, after.length)
  let start = 0
  while (start < most && before.charCodeAt(start) === after.charCodeAt(start)) start++
  if (start > 0 && isHigh(before.charCodeAt(start - 1))) start--
  let end = 0
  while (end < most - start &&
         before.charCodeAt(before.length - 1 - end) === after.charCodeAt(after.length - 1 - end)) end++
  if (end > 0 && isLow(before.charCodeAt(before.length - end))) end--
  return [start, before.length - start - end, after.slice(start, after.length - end)]
}

// Where `index` goes when the change `delta` (a Y.YTextEvent's) is made around it.
function moved (index, delta) {
  let at = 0
  for (const op of delta) {
    if (at > index) break
    if (op.retain !== undefined) {
      at += op.retain
    } else if (op.insert !== undefined) {
      index += op.insert.length // text inserted at the caret goes before it, as in an editor
      at += op.insert.length
    } else if (op.delete !== undefined) {
      index -= Math.min(op.delete, index - at)
    }
  }
  return index
}

export function start ({
  server = 'ws://127.0.0.1:8080/v1/yjs',
  room = 'demo',
  token = null,
  name = `guest-${Math.floor(Math.random() * 1000)}`,
  textarea,
  overlay,
  users,
  status
}) {
  const doc = new Y.Doc()
  const text = doc.getText('text') // the name the Node clients in tests/js use too
  const provider = new WebsocketProvider(server, room, doc, {
    params: token ? { token } : {}, // ?token=: a JWT or an API key; none = anonymous
    disableBc: true // no tab-to-tab shortcut: every edit goes through the server
  })
  const awareness = provider.awareness
  const color = COLORS[doc.clientID % COLORS.length]
  awareness.setLocalStateField('user', { name, color })

  // --- the text: the textarea's edits into the Y.Text, everyone else's into the textarea
  let shown = textarea.value = text.toString()
  textarea.addEventListener('input', () => {
    const [index, deleted, inserted] = diff(shown, textarea.value)
    shown = textarea.value
    doc.transact(() => {
      if (deleted > 0) text.delete(index, deleted)
      if (inserted) text.insert(index, inserted)
    }, BINDING)
    sendCursor()
  })
  text.observe((event) => {
    if (event.transaction.origin === BINDING) return
    const { selectionStart, selectionEnd, selectionDirection, scrollTop } = textarea
    shown = textarea.value = text.toString()
    textarea.setSelectionRange(moved(selectionStart, event.delta), moved(selectionEnd, event.delta),
      selectionDirection)
    textarea.scrollTop = scrollTop
  })

  // --- our cursor: relative positions, so that it stays put for the others while they type
  const relative = (index) => Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(text, index))
  let sent = null
  function sendCursor () {
    const forward = textarea.selectionDirection !== 'backward'
    const [anchor, head] = forward
      ? [textarea.selectionStart, textarea.selectionEnd]
      : [textarea.selectionEnd, textarea.selectionStart]
    const cursor = document.activeElement === textarea
      ? { anchor: relative(anchor), head: relative(head) }
      : null
    // Every update is broadcast, changed or not: send none when a remote edit only shifted us.
    if (JSON.stringify(cursor) === sent) return
    sent = JSON.stringify(cursor)
    awareness.setLocalStateField('cursor', cursor)
  }
  document.addEventListener('selectionchange', sendCursor)
  textarea.addEventListener('blur', sendCursor)

  // --- the others: carets, selections and names drawn on a transparent copy of the text
  const absolute = (json) => {
    try {
      const position = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(json), doc)
      return position && position.type === text ? position.index : null
    } catch {
      return null // not a relative position (another application's awareness)
    }
  }
  const userOf = (state) => ({
    name: String(state.user?.name ?? state.user ?? 'someone'),
    color: /^#[0-9a-f]{6}$/i.test(state.user?.color ?? '') ? state.user.color : '#888888'
  })
  function render () {
    const value = text.toString()
    const carets = [] // [index, element]
    const selections = [] // [from, to, color]
    for (const [client, state] of awareness.getStates()) {
      if (client === doc.clientID || !state.cursor) continue
      const anchor = absolute(state.cursor.anchor)
      const head = absolute(state.cursor.head)
      if (anchor === null || head === null) continue
      const { name, color } = userOf(state)
      const caret = document.createElement('span')
      caret.className = 'caret'
      caret.dataset.client = client
      caret.style.borderColor = color
      const label = caret.appendChild(document.createElement('span'))
      label.className = 'label'
      label.style.background = color
      label.textContent = name
      carets.push([head, caret])
      if (anchor !== head) selections.push([Math.min(anchor, head), Math.max(anchor, head), color])
    }
    // Cut the text at every caret and selection edge; tint each piece with a selection over it.
    const cuts = [...new Set([0, value.length, ...carets.map(([at]) => at),
      ...selections.flatMap(([from, to]) => [from, to])])].sort((a, b) => a - b)
    overlay.replaceChildren()
    for (let i = 0; i < cuts.length; i++) {
      for (const [at, caret] of carets) if (at === cuts[i]) overlay.append(caret)
      if (i + 1 === cuts.length) break
      const piece = document.createElement('span')
      piece.textContent = value.slice(cuts[i], cuts[i + 1])
      const over = selections.find(([from, to]) => from <= cuts[i] && cuts[i + 1] <= to)
      if (over) piece.style.background = over[2] + '40'
      overlay.append(piece)
    }
    overlay.append('\u200b') // keeps a last empty line as tall as the textarea's
    overlay.scrollTop = textarea.scrollTop

    users.replaceChildren(...[...awareness.getStates()].map(([client, state]) => {
      const { name, color } = userOf(state)
      const item = document.createElement('li')
      item.dataset.client = client
      item.style.color = color
      item.textContent = client === doc.clientID ? `${name} (you)` : name
      return item
    }))
  }
  awareness.on('change', render)
  text.observe(render)
  textarea.addEventListener('scroll', () => { overlay.scrollTop = textarea.scrollTop })

  provider.on('status', ({ status: now }) => { status.textContent = now })
  provider.on('closed', ({ code, reason }) => { // 44xx: refused for good (docs/collaboration.md)
    status.textContent = `closed ${code}: ${reason || 'see the close codes'}`
  })
  render()
  return { doc, text, provider, awareness, rename: (to) => awareness.setLocalStateField('user', { name: to, color }) }
}
