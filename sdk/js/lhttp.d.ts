// TypeScript declarations of the lhttp JavaScript SDK (lhttp.js).

/** Headers in any accepted shape; they are kept in this order on the wire. */
export type HeadersInit =
  | Iterable<readonly [string, string | number]>
  | Map<string, string | number>
  | Record<string, string | number>
  | null
  | undefined;

/** A message given to encode(), send() or request(). */
export interface MessageInit {
  command: string;
  headers?: HeadersInit;
  body?: string | Uint8Array | ArrayBuffer;
}

/** One lhttp message: a command, ordered headers and a body (text or bytes). */
export class Message {
  constructor(command: string, headers?: HeadersInit, body?: string | Uint8Array | ArrayBuffer);
  command: string;
  /** In wire order; names keep their spelling. */
  headers: Array<[string, string]>;
  body: string | Uint8Array;
  /** The first value of the header called `name` (case-insensitive). */
  header(name: string): string | undefined;
  /** Every value of the headers called `name` (case-insensitive). */
  headerValues(name: string): string[];
  /** Replaces every header called `name` by one, at the first one's place. */
  setHeader(name: string, value: string | number): this;
  addHeader(name: string, value: string | number): this;
  removeHeader(name: string): this;
  /** The `publish` header: the channel a received copy came through. */
  readonly channel: string | undefined;
  /** The body as text (bytes decoded as UTF-8). */
  readonly text: string;
  /** The headers as an object; the first value wins for repeated names. */
  headersObject(): Record<string, string>;
  encode(): string | Uint8Array;
}

export class LhttpDecodeError extends Error {}

/**
 * A server's `error` answer, or a local failure (status 0: "timeout", "connection closed",
 * "client closed", or "certificate rejected": the server's certificate was refused at the first
 * connection, with Node's TLS error as `cause`).
 */
export class LhttpError extends Error {
  /** `options.cause`: the underlying error; its message and code are appended to this one's. */
  constructor(status: number, reason: string, answer?: Message, options?: { cause?: unknown });
  status: number;
  reason: string;
  answer?: Message;
}

export interface DecodeOptions {
  /** Bodies of binary frames: decoded as UTF-8 text (default) or kept as bytes. */
  binary?: 'text' | 'bytes';
}

/** Decodes one message from a text frame (string) or a binary frame. */
export function decode(data: string | ArrayBuffer | ArrayBufferView, options?: DecodeOptions): Message;

/** Encodes a message: a string for a text body, bytes for a byte body. */
export function encode(message: MessageInit): string | Uint8Array;

export interface PartInit {
  headers?: HeadersInit;
  body?: string | Uint8Array;
}

/** One part of a multipart body. */
export class Part {
  headers: Array<[string, string]>;
  body: string | Uint8Array;
  header(name: string): string | undefined;
}

/** Builds a multipart body and its `multipart` header value (offsets in UTF-8 bytes). */
export function buildMultipart(parts: PartInit[]): {
  multipart: string;
  offsets: number[];
  body: string | Uint8Array;
};

/** Cuts a multipart body into its parts. */
export function parseMultipart(source: Message | { multipart: string; body: string | Uint8Array }): Part[];

/**
 * Options for the TLS connection of a wss:// URL in Node, handed to the `ws` package and by it
 * to Node's `tls.connect()` (which accepts more than is listed here).
 */
export interface TlsOptions {
  /** Certificates to trust instead of Node's bundled CAs: a private CA, or a self-signed certificate (PEM). */
  ca?: string | Uint8Array | Array<string | Uint8Array>;
  /** A client certificate chain (PEM), for servers that require one (lhttpd's `client_ca_file`). */
  cert?: string | Uint8Array | Array<string | Uint8Array>;
  /** The client certificate's private key (PEM). */
  key?: string | Uint8Array | Array<string | Uint8Array>;
  passphrase?: string;
  /** The name the certificate must hold, when it is not the URL's host. */
  servername?: string;
  [option: string]: unknown;
}

export interface ClientOptions {
  /** Reconnect after the connection is lost (default true; false for Lhttp). */
  reconnect?: boolean;
  /** First backoff delay in milliseconds (default 500). */
  reconnectDelay?: number;
  /** Largest backoff delay in milliseconds (default 30000). */
  maxReconnectDelay?: number;
  /** How long request() and subscribe() wait for an answer, in milliseconds (default 10000). */
  requestTimeout?: number;
  /**
   * Frames kept while disconnected (default 1000). A request or acknowledged publish queued
   * while disconnected waits for the next connection; if it gives up first (its timeout, or
   * close()) its frame is dropped, so a rejected publish is never sent later.
   */
  maxQueue?: number;
  /**
   * connect() only: milliseconds to wait for the first connection, its token accepted when
   * there is one (default 10000; 0 waits for ever). connect() rejects with LhttpError status 0
   * reason "connect timeout" after it (and closes the client), or with 401 when the token is
   * refused.
   */
  connectTimeout?: number;
  /**
   * Milliseconds without receiving anything after which the client sends `LHTTP/1.0 ping`
   * (default 25000); 0 turns the liveness check off.
   */
  pingAfter?: number;
  /**
   * Milliseconds after that ping without receiving anything before the connection counts as
   * dead: it is dropped (`close` with code 1006, reason "no answer to ping") and the client
   * reconnects (default 10000).
   */
  pingTimeout?: number;
  /** Bodies of binary frames as text (default) or bytes. */
  binary?: 'text' | 'bytes';
  /** The WebSocket class (default: the global one, else the `ws` package). */
  WebSocket?: unknown;
  /**
   * A JWT sent in an `auth` message first on every (re)connection. A function is called before
   * each connection (it may fetch a fresh token).
   */
  token?: string | (() => string | Promise<string>);
  /**
   * Node only: TLS options for wss:// URLs, e.g. `{ ca: readFileSync('ca.pem') }` to trust a
   * private or self-signed certificate. With them the SDK uses the `ws` package even where a
   * global WebSocket exists (the platform's takes no TLS options), and constructs a given
   * `WebSocket` class as `new WebSocket(url, [], tls)`. In a browser they are an error: browsers
   * check certificates against their own trust store.
   *
   * A certificate rejected at the first connection is final: connect() and `opened` reject with
   * LhttpError reason "certificate rejected" instead of retrying. Rejected at a reconnection, it
   * is an `error` event and the client keeps retrying (the server may be renewing it).
   */
  tls?: TlsOptions;
}

export interface PublishOptions {
  /** The command subscribers receive (default "chat"). */
  command?: string;
  /** More headers, after `publish`. */
  headers?: HeadersInit;
  /** Ask the server to confirm: publish() then returns the answer. */
  ack?: boolean;
}

export type MessageHandler = (message: Message, client: LhttpClient) => void;

export interface SubscribeOptions {
  /**
   * The server first sends the last `recent` messages it keeps of the channel (none when it
   * keeps no history), then the live ones. `0`: none, but the client can recover what it
   * misses from the moment of subscribing. Applies to the first subscribe of a channel.
   */
  recent?: number;
  /**
   * On a channel with presence: the text other members see for this client (one line, at most
   * the server's `limits.max_presence_info` bytes). Kept across reconnections.
   */
  presenceInfo?: string;
}

/** Options of newSubscription(): those of subscribe(), and the bound of its async iterators. */
export interface SubscriptionOptions extends SubscribeOptions {
  /**
   * Messages each async iterator of the object holds for a consumer that has not taken them
   * yet (default 1000). One more, and the iterator stops taking messages, yields those it holds,
   * then throws LhttpError reason "slow consumer"; the subscription goes on.
   */
  buffer?: number;
}

export type SubscriptionState = 'unsubscribed' | 'subscribing' | 'subscribed';

/** Why a Subscription object became `unsubscribed`. */
export type UnsubscribedSource =
  /** its own unsubscribe() (reason "unsubscribe"), or the client's close() (reason "client closed") */
  | 'client'
  /** the server refused the subscribe (status, reason, e.g. 403), or did not answer in requestTimeout (status 0, "timeout") */
  | 'refused'
  /** the server ended it (an `unsubscribed` message, with its reason) */
  | 'server'
  /** the connection ended and will not come back (reconnect off, close 4001, a refused token) */
  | 'closed';

export type SubscriptionEventType = 'subscribing' | 'subscribed' | 'unsubscribed' | 'message' | 'gap' | 'error';

/** A position in a channel's history. */
export interface StreamPosition {
  epoch: string;
  offset: number;
}

/**
 * A subscription to one channel as an object with its own state and events, from
 * `client.newSubscription(channel)`. Objects and subscribe() callbacks of one channel share one
 * subscription on the server: asked once, told when the last of them leaves.
 *
 * Events (each with `channel`): `subscribing` (`reconnecting`), `subscribed` (`answer`, and
 * `epoch`, `offset`, `count`, `recovered` from it), `message` (`message`), `gap` (as the
 * client's), `error` (`error`, source "subscribe": the subscribe failed, `unsubscribed`
 * follows), `unsubscribed` (`source`, `reason`, `status`, `error`).
 *
 * `for await (const message of subscription)` subscribes if needed and reads the messages; it
 * ends plainly when the client ended the subscription (unsubscribe(), close()), and throws the
 * `unsubscribed` event's error otherwise, or "slow consumer" (see `buffer`).
 */
export class Subscription extends EventTarget implements AsyncIterable<Message> {
  private constructor();
  readonly client: LhttpClient;
  /** The channel or wildcard pattern. */
  readonly channel: string;
  readonly state: SubscriptionState;
  /**
   * On a channel that keeps history: the last message received (or the point the subscription
   * started from); undefined without history. After unsubscribing, the last one known.
   */
  readonly position: StreamPosition | undefined;
  on(type: SubscriptionEventType, listener: (event: LhttpEvent) => void): this;
  off(type: SubscriptionEventType, listener: (event: LhttpEvent) => void): this;
  /**
   * Subscribes (idempotent: while subscribing or subscribed it returns what the first call
   * did). Resolves with the server's answer once it confirmed, with undefined when
   * unsubscribe() came first; rejects with the LhttpError of a refusal or of close().
   */
  subscribe(): Promise<Message | undefined>;
  /** `unsubscribed` at once; resolves once the server confirmed, when it had to be told. */
  unsubscribe(): Promise<void>;
  /**
   * Resolves once `subscribed` (at once if it is); rejects when the object ends unsubscribed
   * (or is not subscribing), or after `timeout` milliseconds (status 0, "timeout").
   */
  ready(timeout?: number): Promise<void>;
  [Symbol.asyncIterator](): AsyncIterator<Message, undefined>;
}

/** One member of a channel with presence. */
export interface PresenceMember {
  /** The connection's random client id. */
  client: string;
  /** The user of its token; empty without one. */
  user: string;
  /** The `presenceInfo` it subscribed with. */
  info: string;
}

/** Who is in a channel, from presence(). */
export interface PresenceResult {
  channel: string;
  /** Members of the channel. */
  count: number;
  /** How many of them `members` lists (the server caps lists). */
  listed: number;
  /** This connection's own client id. */
  you: string;
  members: PresenceMember[];
}

/** What history() reads: the last `recent` messages, or those after a position. */
export type HistoryQuery = { recent: number } | { since: number; epoch: string };

/** The messages of a history() read, oldest first, and where the channel stands now. */
export interface HistoryResult extends Array<Message> {
  readonly channel: string;
  /** The channel's epoch; undefined when it keeps no history. */
  readonly epoch: string | undefined;
  /** The channel's last offset (0 before its first message, or without history). */
  readonly offset: number;
  /** With `since`: false when some messages after it are no longer kept (none is returned). */
  readonly recovered: boolean | undefined;
}

/** Options of request(message, options). */
export interface RequestOptions {
  /** Milliseconds before a local timeout (default: the client's requestTimeout). */
  timeout?: number;
  /** Called for each answer with `partial:true` (a streamed reply); the last answer settles. */
  onPartial?: (message: Message) => void;
}

/** Options of request(channel, body, options): a request to whoever serves the channel. */
export interface ChannelRequestOptions extends RequestOptions {
  /**
   * The server's timeout in milliseconds (`timeout` header; default: the client's
   * requestTimeout); the client waits a little longer, so the server's 504 comes first.
   */
  timeout?: number;
  /** The command responders receive (default "request"). */
  command?: string;
  /** More headers, after the request's own. */
  headers?: HeadersInit;
  /** `delivery:at-least-once`: a queue-group member that leaves hands it on instead of a 502. */
  atLeastOnce?: boolean;
}

/**
 * What a serve() handler returns: a Message, `{status, command, headers, body}` (`status`
 * becomes the `status` header; `http-<name>` headers are HTTP response headers for gateway
 * requests), a body, or nothing (an empty reply). The command defaults to "reply".
 */
export type ReplyInit =
  | Message
  | { status?: number | string; command?: string; headers?: HeadersInit; body?: string | Uint8Array }
  | string
  | Uint8Array
  | void
  | null
  | undefined;

/** The second argument of a serve() handler. */
export interface Reply {
  /**
   * Sends a partial reply (`partial:true`) before the final one, for streamed answers.
   * Returns false when the delivery is not a request, or its connection has ended.
   */
  partial(answer: ReplyInit): boolean;
  readonly client: LhttpClient;
}

/** Handles one queue-group delivery; what it returns (or resolves with) is the reply. */
export type WorkHandler = (message: Message, reply: Reply) => ReplyInit | Promise<ReplyInit>;

export interface ServeOptions {
  /** Deliveries held (and handlers run) at once, 1 to the server's queues.max_credit (default 1). */
  credit?: number;
}

/** A queue-group membership made by serve(). */
export interface Worker {
  readonly channel: string;
  readonly queue: string;
  /** Takes no new work; resolves at the server's `drained`, once the work in hand is answered. */
  drain(): Promise<void>;
  /** Leaves at once: what this member holds goes to another member (at-least-once) or gets 502. */
  stop(): Promise<void>;
}

/** An event of LhttpClient or Subscription; which properties are set depends on its type. */
export class LhttpEvent extends Event {
  constructor(type: string, properties?: Record<string, unknown>);
  /** open */
  reconnected?: boolean;
  /** close */
  code?: number;
  /** close, unsubscribed (the server's reason), and Subscription's unsubscribed */
  reason?: string;
  willReconnect?: boolean;
  /** reconnecting, reconnect */
  attempt?: number;
  /** reconnecting: milliseconds until the next attempt */
  delay?: number;
  /** message */
  message?: Message;
  /**
   * gap: the channel's epoch now (undefined when it keeps no history any more);
   * Subscription's subscribed: the answer's
   */
  epoch?: string;
  /** gap: the channel's last offset now; Subscription's subscribed: the answer's */
  offset?: number;
  /** Subscription's subscribed: the server's answer (`ok`, or `subscribed`) */
  answer?: Message;
  /** Subscription's subscribed: how many kept messages follow the answer */
  count?: number;
  /** Subscription's subscribed: after a recovery, whether every missed message follows */
  recovered?: boolean;
  /** Subscription's subscribing: a lost connection is the cause */
  reconnecting?: boolean;
  /** Subscription's unsubscribed: the server's status for a refusal (0 for a local failure) */
  status?: number;
  /** gap: epoch and offset of the last message this client had of the channel */
  lastEpoch?: string;
  lastOffset?: number;
  /** error */
  error?: unknown;
  /** error: what failed; Subscription's unsubscribed: why it ended */
  source?: 'transport' | 'server' | 'decode' | 'subscribe' | 'auth' | 'handler' | UnsubscribedSource;
  /** error, unsubscribed, gap, and every event of a Subscription */
  channel?: string;
  /** unsubscribed: the queue group, for a membership */
  queue?: string;
}

export type ClientEventType =
  | 'open'
  | 'close'
  | 'error'
  | 'reconnect'
  | 'reconnecting'
  | 'message'
  | 'unsubscribed'
  | 'gap';

/**
 * A connection that reconnects with jittered backoff and restores its subscriptions, with the
 * messages missed meanwhile on channels that keep history (a `gap` event when some are gone),
 * and pings a connection that has been silent for `pingAfter`.
 */
export class LhttpClient extends EventTarget {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  /** Resolves at the first connection; rejects if the client stops before. */
  readonly opened: Promise<LhttpClient>;
  readonly state: 'connecting' | 'open' | 'closed';
  /** Channels subscribed to (or being subscribed to). */
  readonly channels: string[];
  on(type: ClientEventType, listener: (event: LhttpEvent) => void): this;
  off(type: ClientEventType, listener: (event: LhttpEvent) => void): this;
  /** Sends a message, or an encoded frame; queued while disconnected. */
  send(message: MessageInit | string | Uint8Array): void;
  /** Sends with a fresh request-id; resolves with the answer, rejects with LhttpError. */
  request(message: MessageInit, options?: RequestOptions): Promise<Message>;
  /**
   * A request to whoever serves `channel`: resolves with the reply; rejects with LhttpError
   * (503 no responders, 504 timeout, 502 worker gone, a responder's `error`; 0 for local failures).
   */
  request(channel: string, body?: string | Uint8Array, options?: ChannelRequestOptions): Promise<Message>;
  /** This connection's private inbox address (`_inbox.<hex>`); a new connection has a new one. */
  inbox(): Promise<string>;
  /**
   * Joins queue group `queue` of `channel` and runs `handler` for each delivery (at most
   * `credit` at once), replying and acknowledging; rejoins after reconnections. Resolves once
   * the server confirmed the membership.
   */
  serve(channel: string, queue: string, handler: WorkHandler, options?: ServeOptions): Promise<Worker>;
  /**
   * Resolves with the server's answer once it confirmed the subscription: `ok`, or with
   * `recent`, `subscribed` (`epoch`, `offset` and `count` headers); undefined when unsubscribed
   * before the answer came.
   */
  subscribe(channel: string, handler: MessageHandler, options?: SubscribeOptions): Promise<Message | undefined>;
  /**
   * A new Subscription object for `channel`, unsubscribed until its subscribe(); every call
   * makes a new object. `recent` and `presenceInfo` apply when the channel's subscription is
   * made (by its first object or callback).
   */
  newSubscription(channel: string, options?: SubscriptionOptions): Subscription;
  /** Reads the history the server keeps of `channel`, without subscribing. */
  history(channel: string, query: HistoryQuery): Promise<HistoryResult>;
  /** Who is in `channel` (the count, and at most `limit` members; 0: the count alone). */
  presence(channel: string, options?: { limit?: number }): Promise<PresenceResult>;
  /** Removes one handler, or all; tells the server when none is left, nor any Subscription object. */
  unsubscribe(channel: string, handler?: MessageHandler): Promise<void>;
  publish(channel: string | string[], body?: string | Uint8Array, options?: PublishOptions & { ack?: false }): undefined;
  publish(channel: string | string[], body: string | Uint8Array, options: PublishOptions & { ack: true }): Promise<Message>;
  /**
   * Sends `auth` with `token` now (authenticate, or refresh before expiry) and uses it for later
   * reconnections. Rejects with LhttpError (401 and the reason) when refused.
   */
  authenticate(token: string): Promise<Message>;
  /** Closes for good (no reconnection). */
  close(code?: number, reason?: string): Promise<void>;
}

/** Connects; resolves once the first connection is open. */
export function connect(url: string, options?: ClientOptions): Promise<LhttpClient>;

/** What the original SDK's callbacks receive. */
export class LhttpContext {
  constructor(client: LhttpClient, message?: Message | null);
  /** The received message, or null in on_open. */
  readonly message: Message | null;
  getCommand(): string;
  getHeader(name: string): string | null;
  getHeaders(): Record<string, string>;
  getBody(): string;
  /** Command of the next send(). */
  setCommand(command: string): this;
  /** Header of the next send() only. */
  addHeader(name: string, value: string | number): this;
  send(body?: string | Uint8Array): void;
  publish(channel: string | string[], command?: string | null, headers?: HeadersInit, body?: string | Uint8Array | null): void;
  subscribe(channel: string | string[], command?: string | null, headers?: HeadersInit, body?: string | Uint8Array | null): void;
  unsubscribe(channel: string | string[], command?: string | null, headers?: HeadersInit, body?: string | Uint8Array | null): void;
}

/** The original SDK's entry point, with its callback names. */
export class Lhttp {
  constructor(url: string, options?: ClientOptions);
  readonly client: LhttpClient;
  on_open: ((context: LhttpContext) => void) | null;
  on_message: ((context: LhttpContext) => void) | null;
  on_close: ((context: LhttpContext, event: LhttpEvent) => void) | null;
  on_error: ((context: LhttpContext, event: LhttpEvent) => void) | null;
  publish(channel: string | string[], command?: string | null, headers?: HeadersInit, body?: string | Uint8Array | null): void;
  subscribe(channel: string | string[], command?: string | null, headers?: HeadersInit, body?: string | Uint8Array | null): void;
  unsubscribe(channel: string | string[], command?: string | null, headers?: HeadersInit, body?: string | Uint8Array | null): void;
  close(): Promise<void>;
}
