// Type declarations of @hybridbus/client (src/index.js): the whole public API.
// The protocol behind it is docs/protocol.md; the client's behaviour is docs/clients.md.

/** A CloudEvent in the JSON structured format: attributes and extensions at the top level. */
export interface CloudEvent {
  specversion: "1.0";
  id: string;
  source: string;
  type: string;
  subject?: string;
  time?: string;
  datacontenttype?: string;
  dataschema?: string;
  data?: unknown;
  data_base64?: string;
  tenantid?: string;
  appid?: string;
  partitionkey?: string;
  sequence?: string;
  expirytime?: string;
  lamport?: number;
  /** Any other extension: a string, an integer or a boolean. */
  [extension: string]: unknown;
}

/** What `publish` takes: `type` at least; `specversion`, `id` and `source` are filled in. */
export interface EventInput {
  type: string;
  data?: unknown;
  id?: string;
  source?: string;
  subject?: string;
  time?: string;
  datacontenttype?: string;
  [attribute: string]: unknown;
}

export type ClientState = "idle" | "connecting" | "connected" | "reconnecting" | "closed";

export interface ClientOptions {
  /** A fixed token (a JWT), sent at every connect. */
  token?: string;
  /** A token provider: asked at every connect and ahead of the token's expiry (`refresh`). */
  getToken?: () => Promise<string> | string;
  /** A WebSocket constructor (default: `globalThis.WebSocket`; Node 20: the `ws` package, or `--experimental-websocket`). */
  WebSocket?: new (url: string, protocols?: string | string[], options?: any) => WebSocketLike;
  /**
   * Node, with the `ws` package as `WebSocket`: the CAs a `wss://` server is verified
   * against, and a client certificate for a server that requires one (mutual TLS). The
   * server's certificate is always verified; a browser's or Node's built-in WebSocket
   * takes no TLS options (a TypeError): in Node, trust a CA with `NODE_EXTRA_CA_CERTS`.
   */
  tls?: TlsOptions;
  /** Reconnect backoff in ms: full jitter over `min(max, base * 2^attempt)`. Default 100 and 5000. */
  reconnect?: { base?: number; max?: number };
  /** Milliseconds a command waits for its answer, reconnects included (default 30,000). */
  requestTimeout?: number;
  /** Refresh a provider's token this long (ms) before it expires, at most a quarter of its lifetime (default 30,000). */
  refreshMargin?: number;
  /** Events an iterated subscription holds for the application before it ends with 1201 (default 10,000). */
  queueSize?: number;
  /** The client software's name, sent with `connect` (default "hybridbus-js"). */
  name?: string;
  /** Groups a user's connections from one device (`excludeSelf: "device"`). */
  device?: string;
  /** The `source` of published events that have none (default "/hybridbus-js"). */
  source?: string;
}

/** PEM text, or its bytes (in Node, a Buffer from `readFileSync`). */
export type Pem = string | Uint8Array;

/** `ClientOptions.tls`: passed to the `ws` package's WebSocket (Node's `tls.connect`). */
export interface TlsOptions {
  /** The CA certificates to verify the server with, in place of Node's (default: Node's CAs, `NODE_EXTRA_CA_CERTS` included). */
  ca?: Pem | Pem[];
  /** The client certificate (its chain after it), with `key`. */
  cert?: Pem | Pem[];
  /** The client certificate's private key (unencrypted), with `cert`. */
  key?: Pem | Pem[];
}

/** What the client needs of a WebSocket: the browser's, undici's and `ws`'s all fit. */
export interface WebSocketLike {
  readonly protocol: string;
  binaryType: string;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((event: any) => void) | null;
  onmessage: ((event: any) => void) | null;
  onerror: ((event: any) => void) | null;
  onclose: ((event: any) => void) | null;
}

/** The connect reply (docs/protocol.md §4). */
export interface ConnectResult {
  client: string;
  version: string;
  ping: number;
  max_frame_size: number;
  tenant?: string;
  expires?: number;
  session?: string;
  resumed?: boolean;
  grace?: number;
}

export interface PublishResult {
  offset: number;
  shard: number;
  position: number;
  epoch: string;
  duplicate: boolean;
  /** The resume token right after this event. */
  token: string;
}

/** A server-side filter (docs/protocol.md §5.1). */
export interface Filter {
  level?: string;
  fields?: Record<string, unknown>;
  contains?: string;
  regex?: string;
  types?: string[];
}

/** One event of a subscription: the wire's `event` push, and the token after it. */
export interface Delivery {
  pattern: string;
  topic: string;
  offset: number;
  shard: number;
  position: number;
  event: CloudEvent;
  /** The resume token after this event: subscribe from it to continue exactly after it. */
  token: string;
}

export interface SubscribeResult {
  epoch: string;
  position: string;
  recovered: boolean;
}

export interface ClientInfo {
  client: string;
  user?: string;
  device?: string;
  name?: string;
  session?: string;
  state?: "degraded";
}

export interface PresenceResult {
  clients: ClientInfo[];
  count: number;
  cursor?: string;
}

/** A `join`, `leave` or `presence` push of a watched topic. */
export interface PresenceChange {
  type: "join" | "leave" | "presence";
  topic: string;
  info: ClientInfo;
  state?: "degraded" | "active";
}

export interface SubscribeOptions {
  /** A resume token, "latest" (the default: what is appended from now on) or "earliest" (every retained event first). */
  since?: string | "latest" | "earliest";
  filter?: Filter;
  /** Watch the topic's members (`sub.members`, `onPresence`); for a topic, not a wildcard pattern. */
  presence?: boolean;
  /** Deliveries as callbacks instead of an async iterator. */
  onEvent?: (delivery: Delivery) => void;
  /** Continuity was lost (1202): events after the token are gone. Without it an iterator throws once at the gap. */
  onGap?: (error: HybridbusError) => void;
  onPresence?: (change: PresenceChange | PresenceResult, members: Map<string, ClientInfo>) => void;
  /** The subscription ended: `null` when unsubscribed, else why. */
  onEnd?: (error: Error | null) => void;
}

export class Subscription implements AsyncIterableIterator<Delivery> {
  readonly pattern: string;
  readonly filter: Filter | null;
  readonly presence: boolean;
  /** The resume token after the last event received (or where the subscription started). */
  readonly position: string | null;
  /** False for good once continuity was lost. */
  readonly recovered: boolean;
  /** With `presence`: the topic's members by client id. */
  readonly members: Map<string, ClientInfo> | null;
  /** Resolves with the first subscribe reply; rejects if the server refused it. */
  readonly ready: Promise<SubscribeResult>;
  readonly ended: boolean;
  unsubscribe(): Promise<void>;
  /** Up to `limit` deliveries, waiting up to `wait` ms for the first (none: for ever). */
  take(limit?: number, wait?: number): Promise<Delivery[]>;
  next(): Promise<IteratorResult<Delivery, undefined>>;
  /** Leaving a `for await` loop unsubscribes. */
  return(): Promise<IteratorResult<Delivery, undefined>>;
  [Symbol.asyncIterator](): Subscription;
}

export interface HistoryItem {
  topic: string;
  offset: number;
  shard: number;
  position: number;
  event: CloudEvent;
}

export interface HistoryResult {
  events: HistoryItem[];
  /** The token to continue from. */
  position: string;
  more: boolean;
  exact: boolean;
}

export interface HistoryOptions {
  /** A resume token, or a Unix time in seconds (`since_time`). */
  since?: string | number;
  limit?: number;
  filter?: Filter;
}

/** A consumer group's settings (docs/groups.md), with their protocol names. */
export interface GroupSettings {
  start?: "latest" | "earliest" | string;
  ack_wait?: number;
  redelivery?: number[];
  max_deliveries?: number;
  ordered?: boolean;
  max_in_flight?: number;
  member_in_flight?: number;
  max_pending?: number;
  [setting: string]: unknown;
}

export interface GroupOptions extends GroupSettings {
  /** The member's name (default: the server makes one up, kept for the rejoins). */
  member?: string;
}

export class GroupDelivery {
  readonly group: Group;
  readonly id: string;
  readonly attempt: number;
  readonly dedupe: string;
  readonly topic: string;
  readonly offset: number;
  readonly event: CloudEvent;
  ack(): Promise<void>;
  nack(options?: { delay?: number; error?: string }): Promise<void>;
  extend(): Promise<void>;
  term(reason?: string): Promise<void>;
}

export class Group implements AsyncIterableIterator<GroupDelivery> {
  readonly name: string;
  readonly pattern: string | null;
  readonly member: string | null;
  readonly settings: GroupSettings | null;
  readonly ended: boolean;
  ack(...deliveries: GroupDelivery[]): Promise<void>;
  take(limit?: number, wait?: number): Promise<GroupDelivery[]>;
  leave(): Promise<void>;
  next(): Promise<IteratorResult<GroupDelivery, undefined>>;
  /** Leaving a `for await` loop leaves the group. */
  return(): Promise<IteratorResult<GroupDelivery, undefined>>;
  [Symbol.asyncIterator](): Group;
}

/** One client's awareness state on a topic (docs/protocol.md §5.11). */
export interface AwarenessState {
  client: string;
  /** Its whole state: key → JSON value. */
  state: Record<string, any>;
  /** The stamp of its last change (compare the stamps of one client). */
  lamport: number;
  user: string | null;
}

/** A change of another client's awareness state; `removed`: its connection closed (`state` is empty). */
export interface AwarenessChange extends AwarenessState {
  topic: string;
  removed: boolean;
}

/**
 * Awareness on one topic: `client.awareness(topic)`. This client's state (`set`, set again
 * after every reconnect) and the others' (`watch`, `on("change")`, iterating; watched again
 * after every reconnect, the differences reported as changes).
 */
export class Awareness implements AsyncIterableIterator<AwarenessChange> {
  readonly topic: string;
  /** This client's state on the topic, as the server took it. */
  readonly own: Readonly<Record<string, any>>;
  readonly watching: boolean;
  readonly ended: boolean;
  /** Merge `changes` into this client's state (`null` removes a key); the Lamport stamp. 1643/1644 when over the limits. */
  set(changes: Record<string, unknown>, options?: { lamport?: number }): Promise<number>;
  /** Watch the others' states; resolves with them (1110 without `presence` on the topic). */
  watch(): Promise<Map<string, AwarenessState>>;
  unwatch(): Promise<void>;
  /** The others' current states, by client id. */
  states(): Map<string, AwarenessState>;
  /** Listen to the others' changes (starts watching); returns what removes the listener. */
  on(type: "change", listener: (change: AwarenessChange) => void): () => void;
  off(type: "change", listener: (change: AwarenessChange) => void): void;
  /** Clear this client's state, stop watching, end the iterator; the client forgets the view. */
  close(): Promise<void>;
  /** Up to `limit` changes (at most one per client: the newest), waiting up to `wait` ms for the first. */
  take(limit?: number, wait?: number): Promise<AwarenessChange[]>;
  next(): Promise<IteratorResult<AwarenessChange, undefined>>;
  /** Leaving a `for await` loop closes the view. */
  return(): Promise<IteratorResult<AwarenessChange, undefined>>;
  [Symbol.asyncIterator](): Awareness;
}

/** A state document went to `version`; `patch` made it (null: a whole new `document`). */
export interface StateChange {
  topic: string;
  version: number;
  patch: unknown;
  document: any;
}

export interface PatchOptions {
  /** Compare and set: only if the document is at this version (else 1640 `STATE_CONFLICT`). */
  ifVersion?: number;
  /** The patch's place in Lamport order (1641 `PATCH_TOO_OLD` if before the reorder window). */
  lamport?: number;
}

/**
 * A state topic's document, kept current across reconnects: `await client.stateTopic(topic)`.
 * Every change in version order, never a gap, never a repeat.
 */
export class StateTopic implements AsyncIterableIterator<StateChange> {
  readonly topic: string;
  /** The document at `version`. */
  readonly document: any;
  readonly version: number;
  readonly ended: boolean;
  /** Merge `patch` (RFC 7396); the new version, once `document` holds it. 1640/1641/1642 when refused. */
  patch(patch: unknown, options?: PatchOptions): Promise<number>;
  on(type: "change", listener: (change: StateChange) => void): () => void;
  off(type: "change", listener: (change: StateChange) => void): void;
  /** Unsubscribe; the iterator is done. */
  close(): Promise<void>;
  take(limit?: number, wait?: number): Promise<StateChange[]>;
  next(): Promise<IteratorResult<StateChange, undefined>>;
  /** Leaving a `for await` loop closes the view. */
  return(): Promise<IteratorResult<StateChange, undefined>>;
  [Symbol.asyncIterator](): StateTopic;
}

export interface ReconnectInfo {
  attempt: number;
  /** Milliseconds until the attempt. */
  delay: number;
  reason: string;
}

export interface ClientEvents {
  state: ClientState;
  error: Error;
  presence: PresenceChange;
  reconnect: ReconnectInfo;
}

export class Client {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly state: ClientState;
  /** The last connect reply. */
  readonly info: ConnectResult | null;
  /** The session token the next connect presents. */
  readonly session: string | null;
  /** When the token expires (Unix seconds), as of the last connect or refresh. */
  readonly expires: number | null;
  /** Connections established (1 + reconnects). */
  readonly connects: number;
  /** Of which continued the session. */
  readonly resumes: number;
  connect(): Promise<ConnectResult>;
  close(): Promise<void>;
  on<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): () => void;
  off<K extends keyof ClientEvents>(type: K, listener: (value: ClientEvents[K]) => void): void;
  subscribe(pattern: string, options?: SubscribeOptions): Subscription;
  publish(topic: string, event: EventInput, options?: { excludeSelf?: "connection" | "device" }): Promise<PublishResult>;
  history(pattern: string, options?: HistoryOptions): Promise<HistoryResult>;
  presence(topic: string, options?: { limit?: number; cursor?: string }): Promise<PresenceResult>;
  group(name: string, pattern?: string | null, options?: GroupOptions): Promise<Group>;
  /** The awareness view of `topic` (one per topic until closed). */
  awareness(topic: string): Awareness;
  /** Subscribe to the state document of `topic` (1013 if this client already does). */
  stateTopic(topic: string): Promise<StateTopic>;
  /** Merge `patch` into the state document of `topic`; its new version. */
  patch(topic: string, patch: unknown, options?: PatchOptions): Promise<number>;
  refresh(token?: string): Promise<number | null>;
  ping(): Promise<void>;
}

export class HybridbusError extends Error {
  constructor(
    code: number,
    reason: string,
    more?: { retriable?: boolean; closeCode?: number | null; node?: string; url?: string },
  );
  /** The error code of docs/protocol.md §10. */
  readonly code: number;
  /** The server's message (or the client's). */
  readonly reason: string;
  readonly retriable: boolean;
  /** With 1220 DISCONNECTED: the WebSocket close code, when the server closed. */
  readonly closeCode: number | null;
  readonly node?: string;
  readonly url?: string;
}

export declare const SUBPROTOCOL: "hybridbus.v1.json";
export declare const VERSION: string;
export declare const ErrorCode: Readonly<Record<string, number>>;
export declare const CloseCode: Readonly<Record<string, number>>;
export declare function codeName(code: number): string;
export declare function reconnectAllowed(code: number | null | undefined): boolean;
export declare function retriable(code: number): boolean;
export declare function parseToken(token: string): { epoch: string; positions: number[] } | null;
/** RFC 7396: `target` with the merge patch `patch` applied (neither is changed). */
export declare function mergePatch(target: unknown, patch: unknown): any;
export declare function formatToken(position: { epoch: string; positions: number[] }): string;
