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

/** A server's `error` answer, or a local failure (status 0: "timeout", "connection closed", "client closed"). */
export class LhttpError extends Error {
  constructor(status: number, reason: string, answer?: Message);
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

export interface ClientOptions {
  /** Reconnect after the connection is lost (default true; false for Lhttp). */
  reconnect?: boolean;
  /** First backoff delay in milliseconds (default 500). */
  reconnectDelay?: number;
  /** Largest backoff delay in milliseconds (default 30000). */
  maxReconnectDelay?: number;
  /** How long request() and subscribe() wait for an answer, in milliseconds (default 10000). */
  requestTimeout?: number;
  /** Frames kept while disconnected (default 1000). */
  maxQueue?: number;
  /** Bodies of binary frames as text (default) or bytes. */
  binary?: 'text' | 'bytes';
  /** The WebSocket class (default: the global one, else the `ws` package). */
  WebSocket?: unknown;
  /**
   * A JWT sent in an `auth` message first on every (re)connection. A function is called before
   * each connection (it may fetch a fresh token).
   */
  token?: string | (() => string | Promise<string>);
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

/** An event of LhttpClient; which properties are set depends on its type. */
export class LhttpEvent extends Event {
  constructor(type: string, properties?: Record<string, unknown>);
  /** open */
  reconnected?: boolean;
  /** close */
  code?: number;
  reason?: string;
  willReconnect?: boolean;
  /** reconnecting, reconnect */
  attempt?: number;
  /** reconnecting: milliseconds until the next attempt */
  delay?: number;
  /** message */
  message?: Message;
  /** error */
  error?: unknown;
  source?: 'transport' | 'server' | 'decode' | 'subscribe' | 'auth' | 'handler';
  channel?: string;
}

export type ClientEventType = 'open' | 'close' | 'error' | 'reconnect' | 'reconnecting' | 'message';

/** A connection that reconnects with jittered backoff and restores its subscriptions. */
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
  request(message: MessageInit, options?: { timeout?: number }): Promise<Message>;
  /** Resolves once the server confirmed the subscription. */
  subscribe(channel: string, handler: MessageHandler): Promise<void>;
  /** Removes one handler, or all; tells the server when none is left. */
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
