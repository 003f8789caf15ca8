// Type-checked (never run) by tests/clients/test_js_client.py: `tsc --noEmit -p test/tsconfig.json`.
// A typed usage of the whole public API, resolved through package.json's "exports" and "types".
import {
  Client,
  ErrorCode,
  HybridbusError,
  mergePatch,
  parseToken,
  type Awareness,
  type AwarenessChange,
  type AwarenessState,
  type ClientState,
  type Delivery,
  type Group,
  type GroupDelivery,
  type HistoryResult,
  type PresenceResult,
  type PublishResult,
  type StateChange,
  type StateTopic,
  type Subscription,
  type TlsOptions,
} from "@hybridbus/client";

/** Node with the `ws` package (any constructor taking (url, protocols, options)): TLS options. */
export function overTls(WS: new (url: string, protocols?: string | string[], options?: object) => WebSocket): Client {
  const tls: TlsOptions = { ca: "-----BEGIN CERTIFICATE-----…", cert: new Uint8Array(), key: [new Uint8Array()] };
  return new Client("wss://bus.example.com/v1/ws", { WebSocket: WS, tls });
}

export async function usage(): Promise<void> {
  const client = new Client("ws://127.0.0.1:8080/v1/ws", {
    getToken: async () => "a-token",
    reconnect: { base: 100, max: 5000 },
    requestTimeout: 10_000,
    name: "types-check",
  });
  const states: ClientState[] = [];
  const off = client.on("state", (s) => states.push(s));
  client.on("error", (e: Error) => console.error(e.message));
  client.on("reconnect", (r) => console.log(r.attempt, r.delay, r.reason));
  client.on("presence", (p) => console.log(p.type, p.topic, p.info.client));
  off();
  const info = await client.connect();
  const tenant: string | undefined = info.tenant;

  const sub: Subscription = client.subscribe("docs/+", {
    since: "earliest",
    filter: { level: "warn", types: ["com.acme.note"] },
  });
  const ready = await sub.ready;
  const recovered: boolean = ready.recovered;
  for await (const ev of sub) {
    const d: Delivery = ev;
    const topic: string = d.topic;
    const token: string = d.token;
    const data: unknown = d.event.data;
    console.log(topic, token, data, d.event.id, d.offset, d.position);
    break;
  }
  const batch: Delivery[] = await sub.take(10, 500);
  const position: string | null = sub.position;
  await sub.unsubscribe();

  client.subscribe("rooms/1", {
    presence: true,
    onEvent: (ev) => console.log(ev.event.type),
    onGap: (error) => console.log(error.code),
    onPresence: (_change, members) => console.log(members.size),
  });

  const ack: PublishResult = await client.publish(
    "docs/42",
    { type: "com.acme.note", data: { x: 1 }, subject: "s", traceparent: "00-ab" },
    { excludeSelf: "connection" },
  );
  const page: HistoryResult = await client.history("docs/+", { since: ack.token, limit: 10 });
  const more: boolean = page.more;
  const older = await client.history("docs/+", { since: Date.now() / 1000 - 600 });
  const members: PresenceResult = await client.presence("docs/42", { limit: 100 });
  const count: number = members.count;

  const g: Group = await client.group("billing", "invoices/#", { ack_wait: 10, member: "worker-1" });
  for await (const d of g) {
    const delivery: GroupDelivery = d;
    await delivery.ack();
    await delivery.nack({ delay: 5, error: "later" });
    await delivery.extend();
    await delivery.term("bad");
    break;
  }
  const held: GroupDelivery[] = await g.take(5, 100);
  await g.ack(...held);
  await g.leave();

  const aw: Awareness = client.awareness("docs/42");
  const stamp: number = await aw.set({ cursor: { line: 3, ch: 14 }, status: null }, { lamport: 7 });
  const offChange = aw.on("change", (c: AwarenessChange) => console.log(c.client, c.state, c.removed, c.lamport, c.user));
  offChange();
  const others: Map<string, AwarenessState> = await aw.watch();
  const now: Map<string, AwarenessState> = aw.states();
  for await (const change of aw) {
    const removed: boolean = change.removed;
    console.log(removed, change.topic);
    break;
  }
  const seen: AwarenessChange[] = await aw.take(10, 100);
  const mine: Readonly<Record<string, any>> = aw.own;
  await aw.unwatch();
  await aw.close();

  const doc: StateTopic = await client.stateTopic("boards/1");
  const version: number = doc.version;
  const title: unknown = doc.document?.title;
  doc.on("change", (c: StateChange) => console.log(c.version, c.patch, c.document));
  const next: number = await doc.patch({ title: "Q4", draft: null }, { ifVersion: version });
  await client.patch("boards/1", { title: "Q5" }, { lamport: 3 });
  for await (const change of doc) {
    console.log(change.version, change.patch);
    break;
  }
  const changes: StateChange[] = await doc.take(10, 100);
  await doc.close();
  const merged = mergePatch({ a: 1 }, { a: null, b: [1] });
  console.log(stamp, others.size, now.size, seen, mine, title, next, changes, merged, doc.ended, aw.ended);

  const expires: number | null = await client.refresh();
  try {
    await client.publish("docs/+", { type: "t" });
  } catch (error) {
    if (error instanceof HybridbusError && error.code === ErrorCode.INVALID_TOPIC) {
      const why: string = error.reason;
      const close: number | null = error.closeCode;
      console.log(why, close, error.retriable);
    }
  }
  const parsed = parseToken(ack.token);
  console.log(tenant, recovered, batch, position, more, older, count, expires, parsed?.epoch, states);
  await client.close();
}

// @ts-expect-error: a subscription's pattern is read-only
new Client("ws://x").subscribe("a").pattern = "b";
// @ts-expect-error: publish needs an event type
void new Client("ws://x").publish("a", { data: 1 });
// @ts-expect-error: a state topic's version is read-only
void clientForTypes().stateTopic("b").then((d) => (d.version = 3));
// @ts-expect-error: an awareness view has only "change" events
new Client("ws://x").awareness("a").on("end", () => {});

function clientForTypes(): Client {
  return new Client("ws://x");
}
