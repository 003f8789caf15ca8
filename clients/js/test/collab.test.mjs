// Awareness and state topics: cursors seen at once and removed at the end, conflated; a
// document kept by merge patches, compare-and-set; both survive a cut connection exactly.
import assert from "node:assert/strict";
import { test } from "node:test";

import { ErrorCode, HybridbusError, mergePatch } from "../src/index.js";
import { PROXY_URL, connected, control, needsServer, token, unique, waitFor } from "./support.mjs";

const code = (n) => (e) => e instanceof HybridbusError && e.code === n;

test("merge patch: RFC 7396's examples (appendix A and section 3)", () => {
  const cases = [
    [{ a: "b" }, { a: "c" }, { a: "c" }],
    [{ a: "b" }, { b: "c" }, { a: "b", b: "c" }],
    [{ a: "b" }, { a: null }, {}],
    [{ a: "b", b: "c" }, { a: null }, { b: "c" }],
    [{ a: ["b"] }, { a: "c" }, { a: "c" }],
    [{ a: "c" }, { a: ["b"] }, { a: ["b"] }],
    [{ a: { b: "c" } }, { a: { b: "d", c: null } }, { a: { b: "d" } }],
    [{ a: [{ b: "c" }] }, { a: [1] }, { a: [1] }],
    [["a", "b"], ["c", "d"], ["c", "d"]],
    [{ a: "b" }, ["c"], ["c"]],
    [{ a: "foo" }, null, null],
    [{ a: "foo" }, "bar", "bar"],
    [{ e: null }, { a: 1 }, { e: null, a: 1 }],
    [[1, 2], { a: "b", c: null }, { a: "b" }],
    [{}, { a: { bb: { ccc: null } } }, { a: { bb: {} } }],
    [
      {
        title: "Goodbye!",
        author: { givenName: "John", familyName: "Doe" },
        tags: ["example", "sample"],
        content: "This will be unchanged",
      },
      { title: "Hello!", phoneNumber: "+01-123-456-7890", author: { familyName: null }, tags: ["example"] },
      {
        title: "Hello!",
        author: { givenName: "John" },
        tags: ["example"],
        content: "This will be unchanged",
        phoneNumber: "+01-123-456-7890",
      },
    ],
  ];
  for (const [target, patch, result] of cases) {
    const before = JSON.stringify(target);
    assert.deepEqual(mergePatch(target, patch), result, `${before} + ${JSON.stringify(patch)}`);
    assert.equal(JSON.stringify(target), before, "the target was changed");
  }
  const odd = mergePatch({}, JSON.parse('{"__proto__": {"x": 1}}')); // a key like any other
  assert.deepEqual(Object.keys(odd), ["__proto__"]);
  assert.equal(Object.getPrototypeOf(odd), Object.prototype);
});

test("awareness: a watcher sees a cursor at once, each change, and its removal when the client closes", needsServer, async (t) => {
  const alice = await connected(t);
  const bob = await connected(t, { token: await token({ sub: "bob" }) });
  const topic = unique("cursor");
  const mine = alice.awareness(topic);
  assert.equal(alice.awareness(topic), mine); // one view per topic
  const first = await mine.set({ cursor: { line: 3, ch: 14 } });
  assert.equal(typeof first, "number");
  const theirs = bob.awareness(topic);
  const seen = [];
  theirs.on("change", (c) => seen.push(c));
  const states = await theirs.watch();
  const id = alice.info.client;
  assert.deepEqual([...states.keys()], [id]);
  assert.deepEqual(states.get(id), { client: id, state: { cursor: { line: 3, ch: 14 } }, lamport: first, user: "ann" });
  assert.deepEqual(seen, [{ topic, client: id, state: { cursor: { line: 3, ch: 14 } }, lamport: first, user: "ann", removed: false }]);

  const second = await mine.set({ cursor: { line: 4, ch: 0 }, status: "typing" });
  assert.ok(second > first);
  await waitFor(() => seen.length === 2, 5000, "the change pushed");
  assert.deepEqual(seen[1].state, { cursor: { line: 4, ch: 0 }, status: "typing" });
  assert.equal(seen[1].lamport, second);
  await mine.set({ status: null }); // removes the key
  await waitFor(() => seen.length === 3, 5000, "the removal of a key pushed");
  assert.deepEqual(seen[2].state, { cursor: { line: 4, ch: 0 } });
  assert.deepEqual({ ...mine.own }, { cursor: { line: 4, ch: 0 } });

  await theirs.set({ status: "reading" }); // bob's own: alice watching sees it, never her own
  const others = await mine.watch();
  assert.deepEqual([...others.keys()], [bob.info.client]);
  const many = Object.fromEntries(Array.from({ length: 16 }, (_, n) => [`k${n}`, n])); // 17 with the cursor
  await assert.rejects(mine.set(many), code(ErrorCode.AWARENESS_TOO_MANY_KEYS));
  await assert.rejects(mine.set({ big: "x".repeat(5000) }), code(1644));
  assert.deepEqual({ ...mine.own }, { cursor: { line: 4, ch: 0 } }); // a refused set changes nothing

  await alice.close();
  await waitFor(() => seen.length === 4, 5000, "the removal pushed");
  assert.equal(seen[3].client, id);
  assert.equal(seen[3].removed, true);
  assert.deepEqual(seen[3].state, {});
  assert.equal(theirs.states().size, 0);
  assert.equal(mine.ended, true);
});

test("awareness is conflated: a burst of sets reaches a watcher as a few pushes, the newest last", needsServer, async (t) => {
  const alice = await connected(t);
  const bob = await connected(t);
  const topic = unique("burst");
  const mine = alice.awareness(topic);
  const theirs = bob.awareness(topic);
  assert.deepEqual(await theirs.take(10, 0), []); // iterating watches (no states yet)
  await waitFor(() => theirs.watching && theirs.states().size === 0);
  await theirs.watch();
  const pushes = [];
  theirs.on("change", (c) => pushes.push(c.state.n));
  await Promise.all(Array.from({ length: 100 }, (_, n) => mine.set({ n }))); // one frame
  const id = alice.info.client;
  await waitFor(() => theirs.states().get(id)?.state.n === 99, 5000, "the newest state");
  await new Promise((resolve) => setTimeout(resolve, 200)); // nothing else is on its way
  assert.equal(pushes.at(-1), 99);
  assert.ok(pushes.length <= 5, `${pushes.length} pushes for 100 sets: ${pushes}`);
  const queued = await theirs.take(100, 100); // the iterator: one change per client, the newest
  assert.deepEqual(queued.map((c) => [c.client, c.state.n]), [[id, 99]]);

  await mine.close(); // clears alice's state: bob sees it empty
  await waitFor(() => pushes.length && theirs.states().get(id)?.state.n === undefined, 5000, "the state cleared");
  assert.deepEqual(theirs.states().get(id).state, {});
  assert.notEqual(alice.awareness(topic), mine); // a new view
  assert.deepEqual((await theirs.take(10, 100)).map((c) => c.state), [{}]);
  await theirs.close();
  assert.deepEqual(await theirs.take(10, 100), []); // done
});

test("awareness across a drop: the state is set again (same id; a new session, a new id), the watch renewed, the gone reported removed", needsServer, async (t) => {
  const alice = await connected(t, {}, PROXY_URL); // through the cuttable link: sets a cursor
  const carol = await connected(t, { token: await token({ sub: "carol" }) }, PROXY_URL); // watches through it
  const bob = await connected(t, { token: await token({ sub: "bob" }) }); // watches straight
  const dave = await connected(t, { token: await token({ sub: "dave" }) }); // leaves during the drop
  const topic = unique("aw-drop");
  await alice.awareness(topic).set({ cursor: 1 });
  await dave.awareness(topic).set({ status: "here" });
  const byBob = [];
  bob.awareness(topic).on("change", (c) => byBob.push(c));
  await bob.awareness(topic).watch();
  const byCarol = [];
  const watched = carol.awareness(topic);
  watched.on("change", (c) => byCarol.push(c));
  const oldAlice = alice.info.client;
  const daveId = dave.info.client;
  assert.deepEqual([...(await watched.watch()).keys()].sort(), [oldAlice, daveId].sort());

  await control("hold");
  await waitFor(() => alice.state === "reconnecting" && carol.state === "reconnecting", 5000, "the drop seen");
  await waitFor(() => byBob.some((c) => c.client === oldAlice && c.removed), 5000, "alice removed for bob");
  await dave.close(); // gone while carol could not hear it
  await control("resume");
  await waitFor(() => alice.state === "connected" && carol.state === "connected", 10_000, "the reconnects");
  // Awareness names a state by the presence id, which alice's resumed session keeps: her
  // state is set again under the same id.
  assert.equal(alice.info.client, oldAlice);
  const hersFor = (view) => view.states().get(oldAlice)?.state.cursor === 1;
  await waitFor(() => hersFor(bob.awareness(topic)), 5000, "alice's state set again");
  assert.equal(bob.awareness(topic).states().get(oldAlice)?.user, "ann");
  await waitFor(() => hersFor(watched), 5000, "carol's watch renewed");
  assert.deepEqual([...watched.states().keys()], [oldAlice]);
  // Dave left meanwhile: reported removed (alice too if carol's watch was answered before
  // her state was set again; then her state came back as a change).
  const removed = byCarol.filter((c) => c.removed).map((c) => c.client);
  assert.ok(removed.includes(daveId), `dave removed: ${removed}`);
  assert.ok(removed.every((id) => id === daveId || id === oldAlice), `removed: ${removed}`);
  assert.deepEqual({ ...alice.awareness(topic).own }, { cursor: 1 });
  // Alice watching after the resume: her own state (her id) is left out.
  const hers = await alice.awareness(topic).watch();
  assert.deepEqual([...hers.keys()], []);

  // A session that cannot be resumed (none is presented): a new presence id. Her state is
  // set again under it, the old one is removed, and she still knows her own.
  alice.session = null;
  await control("drop");
  await waitFor(() => alice.state === "connected" && alice.info.client !== oldAlice, 10_000, "a new session");
  const newAlice = alice.info.client;
  await waitFor(() => bob.awareness(topic).states().get(newAlice)?.state.cursor === 1, 5000, "set under the new id");
  await waitFor(() => !bob.awareness(topic).states().has(oldAlice), 5000, "the old id removed");
  await waitFor(() => watched.states().get(newAlice)?.state.cursor === 1, 5000, "carol sees the new id");
  assert.deepEqual([...watched.states().keys()], [newAlice]);
  const again = await alice.awareness(topic).watch();
  assert.deepEqual([...again.keys()], []);
  await new Promise((resolve) => setTimeout(resolve, 200)); // a push of her own would come now
  assert.deepEqual([...alice.awareness(topic).states().keys()], []);
});

test("a state topic: the snapshot, every patch in order, compare-and-set refused with 1640", needsServer, async (t) => {
  const writer = await connected(t);
  const reader = await connected(t);
  const topic = unique("board");
  const doc = await writer.stateTopic(topic);
  assert.equal(doc.version, 0);
  assert.deepEqual(doc.document, {});
  assert.equal(await doc.patch({ title: "Q3", cards: ["a"] }, { ifVersion: 0 }), 1);
  assert.deepEqual(doc.document, { title: "Q3", cards: ["a"] }); // patch resolves once it is in
  await assert.rejects(writer.stateTopic(topic), code(ErrorCode.ALREADY_SUBSCRIBED));

  const other = await reader.stateTopic(topic); // a snapshot at version 1
  assert.equal(other.version, 1);
  assert.deepEqual(other.document, { title: "Q3", cards: ["a"] });
  const changes = [];
  other.on("change", (c) => changes.push(c));
  await Promise.all(Array.from({ length: 10 }, (_, n) => writer.patch(topic, { n, [`k${n}`]: n })));
  await waitFor(() => other.version === 11, 5000, "ten patches");
  assert.deepEqual(changes.map((c) => c.version), [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]);
  assert.deepEqual(changes.map((c) => c.patch.n), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]); // log order: sent order
  assert.deepEqual((await other.take(100, 100)).map((c) => c.version), changes.map((c) => c.version));

  const error = await doc.patch({ title: "late" }, { ifVersion: 1 }).catch((e) => e);
  assert.ok(error instanceof HybridbusError, String(error));
  assert.equal(error.code, ErrorCode.STATE_CONFLICT);
  assert.equal(error.code, 1640);
  assert.equal(doc.document.title, "Q3");
  assert.equal(await doc.patch({ cards: null, title: "Q4" }, { ifVersion: 11 }), 12);
  await waitFor(() => other.version === 12, 5000, "the accepted patch");
  assert.deepEqual(other.document, doc.document);
  assert.equal("cards" in other.document, false);
  assert.equal(other.document.title, "Q4");

  await other.close();
  await writer.patch(topic, { after: true });
  assert.equal(other.version, 12); // closed: no more changes
  assert.deepEqual((await other.take(100, 100)).map((c) => c.version), [12]); // what was queued
  assert.deepEqual(await other.take(100, 100), []); // then done
  assert.equal(other.ended, true);
  const again = await reader.stateTopic(topic); // a new subscription
  assert.equal(again.version, 13);
});

test("a state topic across a drop: exactly the patches missed, the document the server's", needsServer, async (t) => {
  const reader = await connected(t, {}, PROXY_URL);
  const writer = await connected(t);
  const topic = unique("board-drop");
  const doc = await reader.stateTopic(topic);
  await writer.patch(topic, { a: 0, keep: "yes" });
  await waitFor(() => doc.version === 1, 5000, "the first patch");
  const changes = [];
  doc.on("change", (c) => changes.push(c));
  await control("hold");
  await waitFor(() => reader.state === "reconnecting", 5000, "the drop seen");
  for (let n = 1; n <= 5; n++) await writer.patch(topic, { a: n, [`k${n}`]: { n } });
  await writer.patch(topic, { k2: null, keep: null });
  await control("resume");
  await waitFor(() => doc.version === 7, 10_000, "the missed patches");
  assert.deepEqual(changes.map((c) => c.version), [2, 3, 4, 5, 6, 7]);
  assert.ok(changes.every((c) => c.patch !== null), "a snapshot instead of the patches");
  await writer.patch(topic, { z: 1 });
  await waitFor(() => doc.version === 8, 5000, "a live patch after the resume");
  assert.deepEqual(changes.map((c) => c.version), [2, 3, 4, 5, 6, 7, 8]); // no gap, no repeat
  const fresh = await writer.stateTopic(topic); // the server's document, as a snapshot
  assert.equal(fresh.version, 8);
  assert.deepEqual(doc.document, fresh.document);
  assert.deepEqual(doc.document, { a: 5, k1: { n: 1 }, k3: { n: 3 }, k4: { n: 4 }, k5: { n: 5 }, z: 1 });
});

test("a patch whose answer was lost is sent again after the reconnect", needsServer, async (t) => {
  const client = await connected(t, {}, PROXY_URL);
  const reader = await connected(t);
  const topic = unique("patch-again");
  const doc = await reader.stateTopic(topic);
  await control("mute"); // the server's answers are lost from now on
  const patching = client.patch(topic, { title: "x" });
  await waitFor(() => doc.version === 1, 5000, "the patch applied");
  await control("drop"); // ...and the client never heard back
  assert.equal(await patching, 2); // applied again: the same document, one more version
  await waitFor(() => doc.version === 2, 5000, "the second application");
  assert.deepEqual(doc.document, { title: "x" });

  // With ifVersion the second answer is a conflict, although the first went in.
  await control("mute");
  const guarded = client.patch(topic, { title: "y" }, { ifVersion: 2 });
  await waitFor(() => doc.version === 3, 5000, "the guarded patch applied");
  await control("drop");
  await assert.rejects(guarded, code(ErrorCode.STATE_CONFLICT));
  assert.deepEqual(doc.document, { title: "y" }); // read the document to know
});

test("an awareness set whose answer was lost is sent again after the state set again: the newest wins", needsServer, async (t) => {
  const alice = await connected(t, {}, PROXY_URL);
  const bob = await connected(t, { token: await token({ sub: "bob" }) });
  const topic = unique("aw-again");
  const mine = alice.awareness(topic);
  await mine.set({ cursor: 1 });
  await control("mute");
  const setting = mine.set({ cursor: 2 }); // the server takes it, the answer is lost
  const theirs = bob.awareness(topic);
  await theirs.watch();
  await waitFor(() => [...theirs.states().values()].some((s) => s.state.cursor === 2), 5000, "the set taken");
  await control("drop");
  await setting; // sent again on the new connection, after the state held (cursor 1) was set again
  await waitFor(() => alice.state === "connected", 5000, "the reconnect");
  await new Promise((resolve) => setTimeout(resolve, 300)); // whatever else was on its way
  const states = [...(await bob.awareness(topic).watch()).values()].map((s) => s.state);
  assert.deepEqual(states, [{ cursor: 2 }]);
  assert.deepEqual({ ...mine.own }, { cursor: 2 });
});
