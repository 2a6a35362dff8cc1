// The lhttp JavaScript SDK: an ES module for browsers (no build step) and Node 20+.
//
// Sections, in order:
//   1. Messages: the Message class, decode() and encode()
//   2. Multipart bodies: buildMultipart() and parseMultipart()
//   3. The client: LhttpClient and connect()
//   4. Compatibility with the original SDK: Lhttp and its context
//
// The wire format is documented in docs/protocol.md of the lhttp repository:
//
//   LHTTP/1.0 <command>\r\n
//   <name>:<value>\r\n        (any number of headers)
//   \r\n
//   <body>
//
// wss:// URLs work like ws:// ones. Browsers check the server's certificate against their own
// trust store. In Node the `tls` option carries TLS options to the `ws` package, e.g. the CA of
// a private or self-signed certificate:
//
//   const client = await connect('wss://chat.example:8081/', { tls: { ca: readFileSync('ca.pem') } });
//
// A certificate the client rejects at the first connection makes connect() reject with
// LhttpError reason "certificate rejected" (the TLS error as its `cause`) instead of retrying.

const VERSION = 'LHTTP/1.0';
const utf8Encoder = new TextEncoder();
const utf8Decoder = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// 1. Messages
// ---------------------------------------------------------------------------------------------

/** Raised by decode() for bytes that are not an lhttp message. */
export class LhttpDecodeError extends Error {
  constructor(message) {
    super(message);
    this.name = 'LhttpDecodeError';
  }
}

/**
 * An error answered by the server (`LHTTP/1.0 error` with `status` and `reason`), or a local
 * failure: `status` 0 with `reason` "timeout", "connection closed", "client closed" or
 * "certificate rejected" (the server's certificate, at the first connection; the TLS error is
 * the `cause`).
 */
export class LhttpError extends Error {
  /**
   * @param {number} status HTTP-style status code, 0 for local failures
   * @param {string} reason short text
   * @param {Message} [answer] the server's error message, when there is one
   * @param {{cause?: Error}} [options] `cause`: the underlying error; its message (and code) are
   *   appended to this one's
   */
  constructor(status, reason, answer, options) {
    const text = status ? `lhttp error ${status}: ${reason}` : `lhttp: ${reason}`;
    const cause = options?.cause;
    const detail = cause ? `: ${cause.message}${cause.code ? ` (${cause.code})` : ''}` : '';
    super(text + detail, options);
    this.name = 'LhttpError';
    this.status = status;
    this.reason = reason;
    this.answer = answer;
  }
}

/**
 * Normalises every accepted shape of headers to an array of [name, value] pairs, in order:
 * an array of pairs, a Map, any iterable of pairs, or a plain object.
 */
function headerList(headers) {
  if (headers == null) return [];
  if (typeof headers === 'string') throw new TypeError('headers must be pairs, a Map or an object');
  const pairs = typeof headers[Symbol.iterator] === 'function' ? headers : Object.entries(headers);
  return Array.from(pairs, ([name, value]) => [String(name), String(value)]);
}

/** One lhttp message: a command, ordered headers and a body (text or bytes). */
export class Message {
  /**
   * @param {string} command
   * @param {Iterable<[string, string]> | Record<string, string> | null} [headers]
   * @param {string | Uint8Array | ArrayBuffer} [body]
   */
  constructor(command, headers = [], body = '') {
    this.command = command;
    /** @type {Array<[string, string]>} in wire order; names keep their spelling */
    this.headers = headerList(headers);
    this.body = body instanceof ArrayBuffer ? new Uint8Array(body) : body;
  }

  /** The value of the first header called `name` (case-insensitive), or undefined. */
  header(name) {
    const wanted = name.toLowerCase();
    const found = this.headers.find(([n]) => n.toLowerCase() === wanted);
    return found ? found[1] : undefined;
  }

  /** Every value of the headers called `name` (case-insensitive), in order. */
  headerValues(name) {
    const wanted = name.toLowerCase();
    return this.headers.filter(([n]) => n.toLowerCase() === wanted).map(([, v]) => v);
  }

  /** Replaces every header called `name` by one with `value`, at the first one's place. */
  setHeader(name, value) {
    const wanted = name.toLowerCase();
    const at = this.headers.findIndex(([n]) => n.toLowerCase() === wanted);
    this.removeHeader(name);
    this.headers.splice(at < 0 ? this.headers.length : at, 0, [name, String(value)]);
    return this;
  }

  /** Appends a header (a name may repeat). */
  addHeader(name, value) {
    this.headers.push([name, String(value)]);
    return this;
  }

  /** Removes every header called `name` (case-insensitive). */
  removeHeader(name) {
    const wanted = name.toLowerCase();
    this.headers = this.headers.filter(([n]) => n.toLowerCase() !== wanted);
    return this;
  }

  /** The channel a received copy came through (its `publish` header), or undefined. */
  get channel() {
    return this.header('publish');
  }

  /** The body as text (bytes are decoded as UTF-8). */
  get text() {
    return typeof this.body === 'string' ? this.body : utf8Decoder.decode(this.body);
  }

  /** The headers as a plain object; the first value wins for repeated names. */
  headersObject() {
    const object = {};
    for (const [name, value] of this.headers) if (!(name in object)) object[name] = value;
    return object;
  }

  /** The wire form: see encode(). */
  encode() {
    return encode(this);
  }
}

// Spaces and tabs only: the protocol trims nothing else.
const trimSpaces = (text) => text.replace(/^[ \t]+|[ \t]+$/g, '');

function toBytes(data) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new TypeError('expected a string, an ArrayBuffer or a typed array');
}

/**
 * Where the head ends in a string: the head is everything before the first empty line, the body
 * everything after it. Lines end in LF, optionally preceded by CR.
 * Returns [headEnd, bodyStart]; without an empty line the whole input is the head.
 */
function splitText(text) {
  let pos = 0;
  for (;;) {
    const lf = text.indexOf('\n', pos);
    if (lf < 0) return [text.length, text.length];
    const line = text.slice(pos, lf);
    if (pos > 0 && (line === '' || line === '\r')) return [pos, lf + 1];
    pos = lf + 1;
  }
}

/** The same as splitText for UTF-8 bytes, so a binary body is never decoded to find it. */
function splitBytes(bytes) {
  let pos = 0;
  for (;;) {
    const lf = bytes.indexOf(0x0a, pos);
    if (lf < 0) return [bytes.length, bytes.length];
    const length = lf - pos;
    if (pos > 0 && (length === 0 || (length === 1 && bytes[pos] === 0x0d))) return [pos, lf + 1];
    pos = lf + 1;
  }
}

/** Parses a head (start line and header lines) into [command, headers]. */
function parseHead(head) {
  const lines = head.split('\n').map((line) => (line.endsWith('\r') ? line.slice(0, -1) : line));
  if (lines[lines.length - 1] === '') lines.pop(); // the line end of the last header
  const start = lines.shift() ?? '';
  if (!start.startsWith(VERSION + ' ')) throw new LhttpDecodeError('not an LHTTP/1.0 message');
  const command = start.slice(VERSION.length + 1);
  if (!/^[^\s\x00-\x1f\x7f]+$/.test(command)) throw new LhttpDecodeError('invalid command');
  const headers = lines.map((line) => {
    // The name ends at the FIRST colon; the value may contain more (URLs, times).
    const colon = line.indexOf(':');
    if (colon < 0) throw new LhttpDecodeError('header line without a colon');
    const name = trimSpaces(line.slice(0, colon));
    if (name === '') throw new LhttpDecodeError('empty header name');
    return [name, trimSpaces(line.slice(colon + 1))];
  });
  return [command, headers];
}

/**
 * Decodes one lhttp message from a WebSocket frame.
 *
 * The head is the start line and the header lines up to the first empty line; a header's value
 * is everything after its first colon, trimmed of spaces and tabs; the body is everything after
 * the first empty line, blank lines included. Lines may end in CRLF or LF.
 *
 * @param {string | ArrayBuffer | ArrayBufferView} data a text frame (string) or a binary frame
 * @param {{binary?: 'text' | 'bytes'}} [options] for binary frames: decode the body as UTF-8
 *   text (default) or keep it as a Uint8Array
 * @returns {Message}
 * @throws {LhttpDecodeError}
 */
export function decode(data, options = {}) {
  if (typeof data === 'string') {
    const [headEnd, bodyStart] = splitText(data);
    const [command, headers] = parseHead(data.slice(0, headEnd));
    return new Message(command, headers, data.slice(bodyStart));
  }
  const bytes = toBytes(data);
  const [headEnd, bodyStart] = splitBytes(bytes);
  const [command, headers] = parseHead(utf8Decoder.decode(bytes.subarray(0, headEnd)));
  const body = bytes.slice(bodyStart);
  return new Message(command, headers, options.binary === 'bytes' ? body : utf8Decoder.decode(body));
}

function checkCommand(command) {
  if (typeof command !== 'string' || !/^[^\s\x00-\x1f\x7f]+$/.test(command)) {
    throw new TypeError(`invalid lhttp command: ${JSON.stringify(command)}`);
  }
}

function checkHeader(name, value) {
  if (!/^[^:\s\x00-\x1f\x7f]+$/.test(name)) {
    throw new TypeError(`invalid lhttp header name: ${JSON.stringify(name)}`);
  }
  // A line break in a value would let data inject headers or end the head early.
  if (/[\x00-\x08\x0a-\x1f\x7f]/.test(value)) {
    throw new TypeError(`control character in the value of header ${name}`);
  }
}

function concatBytes(chunks) {
  const out = new Uint8Array(chunks.reduce((sum, chunk) => sum + chunk.length, 0));
  let at = 0;
  for (const chunk of chunks) {
    out.set(chunk, at);
    at += chunk.length;
  }
  return out;
}

/** The head of a message or a multipart part: `name:value` CRLF per header, then CRLF. */
function encodeHeaders(headers) {
  let text = '';
  for (const [name, value] of headerList(headers)) {
    checkHeader(name, value);
    text += `${name}:${value}\r\n`;
  }
  return text + '\r\n';
}

/**
 * Encodes a message: `LHTTP/1.0 <command>` CRLF, `name:value` CRLF per header (no space after
 * the colon, in order), an empty line (always, so decoders that look for the first CRLF CRLF
 * find the body), then the body.
 *
 * @param {Message | {command: string, headers?: any, body?: string | Uint8Array | ArrayBuffer}} message
 * @returns {string | Uint8Array} a string for a text body, bytes (a binary frame) for a byte body
 * @throws {TypeError} for an invalid command, header name, or a control character in a value
 */
export function encode(message) {
  checkCommand(message.command);
  const head = `${VERSION} ${message.command}\r\n${encodeHeaders(message.headers)}`;
  const body = message.body ?? '';
  if (typeof body === 'string') return head + body;
  return concatBytes([utf8Encoder.encode(head), toBytes(body)]);
}

// ---------------------------------------------------------------------------------------------
// 2. Multipart bodies
// ---------------------------------------------------------------------------------------------

/**
 * Builds a multipart body: each part is its header lines, an empty line, and its body. The
 * `multipart` header lists the byte offset where each part starts, counted in UTF-8 bytes (not
 * JavaScript characters), so that the server can cut the body without scanning it.
 *
 * @param {Array<{headers?: any, body?: string | Uint8Array}>} parts
 * @returns {{multipart: string, offsets: number[], body: string | Uint8Array}} `body` is a
 *   string when every part's body is a string, otherwise bytes
 * @example
 *   const {multipart, body} = buildMultipart([{headers: {k1: 'v1'}, body: 'body1'},
 *                                             {headers: {k2: 'v2'}, body: 'body2'}]);
 *   client.publish('files', body, {command: 'upload', headers: {multipart}}); // "0 14"
 */
export function buildMultipart(parts) {
  const chunks = parts.map((part) => {
    const head = encodeHeaders(part.headers);
    const body = part.body ?? '';
    return typeof body === 'string' ? head + body : concatBytes([utf8Encoder.encode(head), toBytes(body)]);
  });
  const offsets = [];
  let at = 0;
  for (const chunk of chunks) {
    offsets.push(at);
    at += typeof chunk === 'string' ? utf8Encoder.encode(chunk).length : chunk.length;
  }
  const allText = chunks.every((chunk) => typeof chunk === 'string');
  const body = allText
    ? chunks.join('')
    : concatBytes(chunks.map((chunk) => (typeof chunk === 'string' ? utf8Encoder.encode(chunk) : chunk)));
  return { multipart: offsets.join(' '), offsets, body };
}

/** One part of a multipart body. */
export class Part {
  constructor(headers, body) {
    /** @type {Array<[string, string]>} */
    this.headers = headers;
    this.body = body;
  }

  /** The value of the first header called `name` (case-insensitive), or undefined. */
  header(name) {
    const wanted = name.toLowerCase();
    const found = this.headers.find(([n]) => n.toLowerCase() === wanted);
    return found ? found[1] : undefined;
  }
}

/**
 * Cuts a multipart body into its parts.
 *
 * @param {Message | {multipart: string, body: string | Uint8Array}} source a message with a
 *   `multipart` header, or the header's value and the body
 * @returns {Part[]} part bodies are strings when the body is a string, bytes otherwise
 * @throws {LhttpDecodeError} for offsets that do not describe the body, or a part without its
 *   empty line
 */
export function parseMultipart(source) {
  const value = source instanceof Message ? source.header('multipart') : source.multipart;
  if (value == null) throw new LhttpDecodeError('no multipart header');
  const text = typeof source.body === 'string';
  const bytes = text ? utf8Encoder.encode(source.body) : toBytes(source.body ?? new Uint8Array());
  const offsets = value.trim() === '' ? [] : value.trim().split(/[ \t]+/).map(Number);
  offsets.forEach((offset, i) => {
    const valid = Number.isInteger(offset) && offset >= 0 && offset <= bytes.length;
    if (!valid || (i > 0 && offset <= offsets[i - 1])) {
      throw new LhttpDecodeError(`multipart offsets do not describe the body: ${value}`);
    }
  });
  return offsets.map((start, i) => {
    const raw = bytes.subarray(start, i + 1 < offsets.length ? offsets[i + 1] : bytes.length);
    // A part may have no headers: its first line is then the empty line.
    const startsEmpty = raw[0] === 0x0a || (raw[0] === 0x0d && raw[1] === 0x0a);
    const [headEnd, bodyStart] = startsEmpty ? [0, raw[0] === 0x0a ? 1 : 2] : splitBytes(raw);
    if (headEnd === bodyStart) throw new LhttpDecodeError(`multipart part ${i} has no empty line`);
    const head = utf8Decoder.decode(raw.subarray(0, headEnd));
    const [, headers] = parseHead(`${VERSION} part\n${head}`);
    const body = raw.slice(bodyStart);
    return new Part(headers, text ? utf8Decoder.decode(body) : body);
  });
}

// ---------------------------------------------------------------------------------------------
// 3. The client
// ---------------------------------------------------------------------------------------------

/**
 * A channel name must be one word: whitespace would split it into several channels, a line break
 * would break the message. The server checks the rest (length, the reserved `*` and `>`) and
 * answers 400, so its rules live in one place.
 */
function checkChannel(channel) {
  if (typeof channel !== 'string' || !/^[^\s\x00-\x1f\x7f]+$/.test(channel)) {
    throw new TypeError(`invalid lhttp channel name: ${JSON.stringify(channel)}`);
  }
}

/** The options of subscribe() and newSubscription() that make a subscription, checked. */
function subscribeOptions(options) {
  const { recent, presenceInfo } = options ?? {};
  if (recent !== undefined && !(Number.isSafeInteger(recent) && recent >= 0)) {
    throw new TypeError('recent must be a whole number of messages');
  }
  if (presenceInfo !== undefined && (typeof presenceInfo !== 'string' || /[\r\n]/.test(presenceInfo))) {
    throw new TypeError('presenceInfo must be a string of one line');
  }
  return { recent, presenceInfo };
}

/** True when `name` is a wildcard pattern (`*` one token, `>` the rest), not a channel. */
function isPattern(name) {
  return name.includes('*') || name.includes('>');
}

/** True when `channel` matches wildcard `pattern`, as the server matches them. */
function patternMatches(pattern, channel) {
  const want = pattern.split('.');
  const have = channel.split('.');
  for (let i = 0; i < want.length; i += 1) {
    if (want[i] === '>') return have.length > i;
    if (i >= have.length) return false;
    if (want[i] !== '*' && want[i] !== have[i]) return false;
  }
  return have.length === want.length;
}

/**
 * The WebSocket class to use: the one given, the platform's (browsers, Node 22+), or the `ws`
 * package in Node 20. `ws` is imported only when needed, so browsers never try to load it.
 * With TLS options it is `ws` even where the platform has a WebSocket, which takes none.
 */
async function webSocketClass(given, tls) {
  if (given) return given;
  if (!tls && typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
  try {
    const ws = await import('ws');
    return ws.WebSocket ?? ws.default;
  } catch (cause) {
    if (tls) {
      throw new Error('the tls option needs Node and the "ws" package (browsers use their own certificate trust)', { cause });
    }
    throw new Error('no WebSocket in this environment: install the "ws" package', { cause });
  }
}

// Node's error codes for a server certificate the client does not accept: OpenSSL's
// verification results and the host name check.
const CERTIFICATE_ERRORS = new Set([
  'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'UNABLE_TO_GET_ISSUER_CERT',
  'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'CERT_UNTRUSTED',
  'CERT_REJECTED', 'CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'CERT_REVOKED', 'CERT_SIGNATURE_FAILURE',
  'INVALID_CA', 'INVALID_PURPOSE', 'CERT_CHAIN_TOO_LONG', 'PATH_LENGTH_EXCEEDED', 'HOSTNAME_MISMATCH',
  'ERR_TLS_CERT_ALTNAME_INVALID',
]);

/** An event of LhttpClient; the properties given are copied onto it. */
export class LhttpEvent extends Event {
  constructor(type, properties = {}) {
    super(type);
    Object.assign(this, properties);
  }
}

const DEFAULTS = {
  reconnect: true,
  reconnectDelay: 500,
  maxReconnectDelay: 30000,
  requestTimeout: 10000,
  maxQueue: 1000,
  pingAfter: 25000,
  pingTimeout: 10000,
  binary: 'text',
  WebSocket: undefined,
  token: undefined,
  tls: undefined,
};

const OPEN = 1; // WebSocket.OPEN, the same in browsers and in `ws`

/** An EventTarget with chainable `on` and `off`, for the client and its subscriptions. */
class Emitter extends EventTarget {
  /**
   * Adds `listener` for events of `type`; the listener receives the event.
   * @returns {this}
   */
  on(type, listener) {
    this.addEventListener(type, listener);
    return this;
  }

  /** Removes a listener added with on(). @returns {this} */
  off(type, listener) {
    this.removeEventListener(type, listener);
    return this;
  }
}

/**
 * A connection to an lhttp server that survives restarts: it reconnects with jittered exponential
 * backoff and subscribes again to every channel it held. On a channel that keeps history (its
 * messages carry `offset` and `epoch`) it asks for what it missed (`since` and `epoch`), so
 * that handlers see every message once, in order; when the server no longer has them all, a
 * `gap` event says so.
 *
 * Events (addEventListener, or on/off):
 * - `open`: a connection is established ({reconnected: boolean}); the subscriptions to restore
 *   and the frames queued while disconnected have been sent
 * - `reconnect`: after a reconnection, every subscription and serve() membership has been
 *   restored ({attempt})
 * - `close`: a connection (or an attempt) ended ({code, reason, willReconnect})
 * - `reconnecting`: the next attempt is scheduled ({attempt, delay} in milliseconds)
 * - `message`: any message that is neither the answer to a request nor a queue delivery taken
 *   by serve() ({message})
 * - `gap`: after a reconnection, the server could not send every message of `channel` that
 *   this client missed (trimmed from its history, or lost with a restart): reload what the
 *   application shows, for example with history(channel, {recent}) ({channel, epoch, offset}:
 *   the channel's epoch and last offset now, epoch undefined when it keeps no history;
 *   {lastEpoch, lastOffset}: the last message this client had)
 * - `error`: a transport error, an `error` message not tied to a request, an undecodable frame,
 *   a failed subscription, a refused token, or an exception thrown by a handler ({error, source}:
 *   source is "transport", "server", "decode", "subscribe", "auth" or "handler")
 *
 * Subscriptions are made with a callback, subscribe(channel, handler), or as objects with their
 * own state and events, newSubscription(channel) (see Subscription). Both kinds share one
 * record per channel: the server is asked once, and told when the last of them leaves.
 *
 * With the `token` option, every connection first sends `LHTTP/1.0 auth` with the token (browsers
 * cannot set an Authorization header on a WebSocket), then restores subscriptions.
 *
 * Liveness: when nothing has arrived for `pingAfter` milliseconds the client sends
 * `LHTTP/1.0 ping`; when nothing (the `pong` or anything else) arrives within `pingTimeout`
 * more, the path to the server is dead even though the socket says nothing (a browser cannot
 * see WebSocket pings), and the client drops the connection (`close` with code 1006 and reason
 * "no answer to ping") and reconnects.
 */
export class LhttpClient extends Emitter {
  #options;
  #ws = null;
  #state = 'connecting';
  #stopped = false; // close() was called, or #failure is set: never reconnect
  #failure = null; // why the client gave up by itself (LhttpError), reported to what still waits
  #everOpened = false;
  #connection = 0; // counts connections, so late work for an old one can tell it is stale
  #attempt = 0;
  #retryTimer = null;
  // {frame, id} sent while not connected, flushed after resubscribing; `id` is the request-id of
  // a request waiting for its answer (its frame leaves the queue when the request gives up).
  #outbox = [];
  #pending = new Map(); // request-id -> {resolve, reject, timer, wait, onPartial, history, onAnswer, sent}
  // channel -> {handlers: Set, objects: Set, resolve, reject, promise, recent, presenceInfo,
  // epoch, offset, confirmed, answer}: one record per channel, whoever holds it. `handlers` are
  // subscribe() callbacks, `objects` the links of Subscription objects; the record lives while
  // either is non-empty. `epoch` and `offset` are those of the last message received on a
  // channel that keeps history (undefined before the first, or on a channel that keeps none).
  // `confirmed`: the server has answered the subscribe of the current connection (`answer`).
  #subscriptions = new Map();
  #workers = new Map(); // workerKey(channel, queue) -> the state of one serve() loop
  // Request ids are unique per client, so that a published copy of another client's request
  // (which keeps its request-id) is never mistaken for an answer.
  #idPrefix = Math.random().toString(36).slice(2, 10);
  #nextId = 1;
  #settleOpened;
  #openedSettled = false;
  #token = null; // the token for the connection being opened, resolved before it opens
  // A history() read whose answer has come and whose messages are arriving:
  // {channel, remaining, result, finish, fail}. The server queues the answer and its messages
  // together, so they arrive one after another and one slot is enough.
  #reading = null;
  #lastReceived = 0; // Date.now() of the last frame received
  #pingSent = 0; // Date.now() of the ping still waiting for a sign of life; 0 when none
  #livenessTimer = null;

  /**
   * Starts connecting at once.
   *
   * @param {string} url a ws:// or wss:// URL (any path)
   * @param {object} [options]
   * @param {boolean} [options.reconnect=true] reconnect after the connection is lost
   * @param {number} [options.reconnectDelay=500] first backoff delay, in milliseconds
   * @param {number} [options.maxReconnectDelay=30000] the largest backoff delay
   * @param {number} [options.requestTimeout=10000] how long request() and subscribe() wait
   * @param {number} [options.maxQueue=1000] frames kept while disconnected; send() throws beyond
   * @param {number} [options.pingAfter=25000] milliseconds without receiving anything after which
   *   the client sends a `ping`; 0 turns the liveness check off
   * @param {number} [options.pingTimeout=10000] milliseconds after that ping without receiving
   *   anything before the connection counts as dead and is dropped (then reconnected)
   * @param {'text'|'bytes'} [options.binary='text'] bodies of binary frames as text or bytes
   * @param {typeof WebSocket} [options.WebSocket] the WebSocket class to use
   * @param {string | (() => string | Promise<string>)} [options.token] a JWT sent in an `auth`
   *   message first on every (re)connection; a function is called before each connection, so it
   *   can fetch a fresh token
   * @param {object} [options.tls] Node only: options for the TLS connection of a wss:// URL,
   *   handed to the `ws` package and by it to Node's tls.connect(): `ca` (to trust a private or
   *   self-signed certificate), `cert` and `key` (a client certificate), `servername`, ... With
   *   them the SDK uses `ws` even where a global WebSocket exists, and constructs a given
   *   `WebSocket` class as `new WebSocket(url, [], tls)`, the signature of `ws`. In a browser they
   *   are an error: browsers check certificates against their own trust store.
   */
  constructor(url, options = {}) {
    super();
    this.url = url;
    this.#options = { ...DEFAULTS, ...options };
    const { tls } = this.#options;
    if (tls != null && (typeof tls !== 'object' || Array.isArray(tls))) {
      throw new TypeError('the tls option must be an object of TLS options');
    }
    for (const name of ['pingAfter', 'pingTimeout']) {
      const value = this.#options[name];
      if (typeof value !== 'number' || !(value >= 0)) throw new TypeError(`${name} must be a number of milliseconds`);
    }
    if (this.#options.pingAfter > 0 && !(this.#options.pingTimeout > 0)) {
      throw new TypeError('pingTimeout must be positive when pingAfter is');
    }
    /** Resolves at the first successful connection; rejects if the client stops before. */
    this.opened = new Promise((resolve, reject) => {
      this.#settleOpened = {
        resolve: (value) => {
          this.#openedSettled = true;
          resolve(value);
        },
        reject: (error) => {
          this.#openedSettled = true;
          reject(error);
        },
      };
    });
    this.opened.catch(() => {}); // observed via connect() or not at all
    this.#connect();
  }

  /** "connecting", "open" or "closed" (closed: waiting to reconnect, or stopped). */
  get state() {
    return this.#state;
  }

  /** The channels this client is subscribed to (or subscribing to). */
  get channels() {
    return [...this.#subscriptions.keys()];
  }

  #emit(type, properties) {
    this.dispatchEvent(new LhttpEvent(type, properties));
  }

  async #connect() {
    this.#state = 'connecting';
    let ws;
    try {
      const { tls } = this.#options;
      const WebSocketClass = await webSocketClass(this.#options.WebSocket, tls);
      if (!(await this.#resolveToken())) return;
      if (this.#stopped) return;
      ws = tls ? new WebSocketClass(this.url, [], { ...tls }) : new WebSocketClass(this.url);
    } catch (error) {
      // A malformed URL or a missing `ws` package does not get better by retrying.
      this.#stopped = true;
      this.#emit('error', { error, source: 'transport' });
      this.#closed(1006, String(error.message ?? error));
      return;
    }
    ws.binaryType = 'arraybuffer';
    this.#ws = ws;
    // Events of a socket this client has already given up on are ignored.
    ws.onopen = () => ws === this.#ws && this.#opened();
    ws.onmessage = (event) => ws === this.#ws && this.#received(event.data);
    ws.onerror = (event) => {
      if (ws !== this.#ws) return;
      let error = event.error ?? new Error(event.message || 'WebSocket error');
      // A certificate rejected at the first connection is a configuration error that retrying
      // cannot mend: give up (at close), so that connect() says why instead of waiting for ever.
      // Later, a rejected certificate may be a renewal in progress on the server: keep trying.
      // (Browsers do not tell why a connection failed; there it is a failure like any other.)
      if (!this.#everOpened && CERTIFICATE_ERRORS.has(error.code)) {
        error = new LhttpError(0, 'certificate rejected', undefined, { cause: error });
        this.#failure = error;
      }
      this.#emit('error', { error, source: 'transport' });
    };
    ws.onclose = (event) => {
      if (ws !== this.#ws) return;
      this.#ws = null;
      this.#closed(event.code, event.reason ?? '');
    };
  }

  #opened() {
    const reconnected = this.#everOpened;
    this.#everOpened = true;
    this.#state = 'open';
    const connection = ++this.#connection;
    const attempt = this.#attempt;
    this.#attempt = 0;
    this.#lastReceived = Date.now();
    this.#pingSent = 0;
    this.#armLiveness(this.#options.pingAfter);
    // The server handles messages in order: `auth` first, so that what follows is authorized.
    const authenticated = this.#token ? this.#sendAuth(this.#token) : null;
    // Subscriptions go before queued frames, so that a queued publish to a channel this client
    // subscribes to reaches it too.
    const restored = [...this.#subscriptions.keys()].map((channel) => this.#subscribeOnServer(channel));
    // Queue-group membership ends with a connection, like subscriptions: join again.
    for (const worker of this.#workers.values()) if (!worker.leaving) restored.push(this.#joinOnServer(worker));
    const outbox = this.#outbox;
    this.#outbox = [];
    for (const { frame, id } of outbox) {
      this.#ws.send(frame);
      const request = id !== undefined ? this.#pending.get(id) : undefined;
      if (request) request.sent = true;
    }
    this.#emit('open', { reconnected });
    if (authenticated && !this.#openedSettled) {
      // connect() settles with the answer to the token: a refused token is its error, at once,
      // rather than a client that looks connected and is refused everything.
      authenticated.then(
        () => this.#settleOpened.resolve(this),
        (error) => {
          if (error.status !== 401 && error.status !== 403) return; // lost: tried again
          this.#failure = error;
          this.#ws?.close(1000, 'token refused');
        },
      );
    } else {
      this.#settleOpened.resolve(this);
    }
    if (reconnected) {
      Promise.allSettled(restored).then(() => {
        if (this.#state === 'open' && this.#connection === connection) this.#emit('reconnect', { attempt });
      });
    }
  }

  /** Gets the token for the next connection; false when it could not (a retry is scheduled). */
  async #resolveToken() {
    const { token } = this.#options;
    try {
      this.#token = typeof token === 'function' ? await token() : (token ?? null);
      return true;
    } catch (error) {
      // A token service that is down now may be up at the next attempt.
      this.#emit('error', { error, source: 'auth' });
      if (!this.#stopped) this.#closed(1006, 'no token');
      return false;
    }
  }

  #sendAuth(token) {
    const answer = this.request(new Message('auth', [['token', token]]));
    answer.catch((error) => {
      if (error.reason !== 'connection closed' && error.reason !== 'client closed') {
        this.#emit('error', { error, source: 'auth' });
      }
    });
    return answer;
  }

  /**
   * Sends `token` in an `auth` message now (to authenticate, or to refresh a token before it
   * expires: the server closes a connection whose token expired) and uses it for later
   * reconnections too, replacing the `token` option.
   *
   * @param {string} token a JWT
   * @returns {Promise<Message>} the server's `ok`; rejects with LhttpError (status 401 and the
   *   reason) when the token is refused
   */
  authenticate(token) {
    this.#options.token = token;
    return this.#sendAuth(token);
  }

  #closed(code, reason) {
    const wasStopped = this.#stopped;
    const failure = this.#failure;
    if (failure) this.#stopped = true;
    this.#state = 'closed';
    clearTimeout(this.#livenessTimer);
    this.#livenessTimer = null;
    if (this.#reading) {
      this.#reading.fail(failure ?? new LhttpError(0, wasStopped ? 'client closed' : 'connection closed'));
      this.#reading = null;
    }
    // Close 4001: the server's operator disconnected this client; coming back would undo it.
    if (code === CLOSE_DISCONNECTED) this.#stopped = true;
    const willReconnect = this.#options.reconnect && !this.#stopped;
    // Answers to requests sent on this connection will never come. Requests still queued were
    // never sent: they wait for the next connection (or their timeout), so that one rejected
    // here can never reach the server later. Subscriptions stay: they are sent again.
    for (const [id, request] of this.#pending) {
      if (!request.sent && willReconnect) continue;
      clearTimeout(request.timer);
      this.#pending.delete(id);
      request.reject(failure ?? new LhttpError(0, wasStopped ? 'client closed' : 'connection closed'));
    }
    if (!willReconnect) this.#outbox = [];
    // Deliveries not started yet belong to the lost connection: the server has already answered
    // them 502 or handed them to another member, and their ids mean nothing on the next one.
    for (const worker of this.#workers.values()) worker.backlog = [];
    if (willReconnect) {
      // Every subscription is asked for again on the next connection.
      for (const subscription of this.#subscriptions.values()) {
        subscription.confirmed = false;
        for (const link of [...subscription.objects]) link.lost();
      }
    }
    this.#emit('close', { code, reason, willReconnect });
    if (!willReconnect) {
      // No connection will answer what still waits for one (confirmed ones are settled already).
      const error = failure ?? new LhttpError(0, 'connection closed');
      this.#settleOpened.reject(error);
      for (const subscription of this.#subscriptions.values()) subscription.reject(error);
      for (const worker of this.#workers.values()) worker.reject(error);
      this.#endObjects({ source: 'closed', reason: error.reason, status: error.status, error });
      return;
    }
    // Jittered exponential backoff: many clients dropped by one restart do not come back at once.
    // A server that restarts (close 1012) says how long to wait ("retry in N ms"), spreading its
    // clients itself: that wait is taken instead.
    const hinted = code === 1012 ? /retry in (\d+) ms/.exec(reason) : null;
    const base = Math.min(this.#options.maxReconnectDelay, this.#options.reconnectDelay * 2 ** this.#attempt);
    const delay = hinted
      ? Math.min(this.#options.maxReconnectDelay, Number(hinted[1]))
      : Math.round(base / 2 + Math.random() * (base / 2));
    this.#attempt += 1;
    this.#emit('reconnecting', { attempt: this.#attempt, delay });
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = null;
      this.#connect();
    }, delay);
  }

  #received(data) {
    this.#lastReceived = Date.now();
    let message;
    try {
      message = decode(data, { binary: this.#options.binary });
    } catch (error) {
      this.#emit('error', { error, source: 'decode' });
      return;
    }
    // The messages that follow a `history` answer belong to that read, not to subscriptions.
    const reading = this.#reading;
    if (reading && message.header('publish') === reading.channel) {
      reading.result.push(message);
      reading.remaining -= 1;
      if (reading.remaining === 0) {
        this.#reading = null;
        reading.finish();
      }
      return;
    }
    // Before the messages that follow it: where the subscription of that channel stands now.
    const gap = message.command === 'subscribed' && message.header('publish') === undefined ? this.#caughtUp(message) : null;
    // The server ended a subscription or a queue-group membership (a new token no longer
    // allows it): forget it, so that a reconnection does not ask for it again.
    if (message.command === 'unsubscribed' && message.header('publish') === undefined) {
      const channel = message.header('channel');
      const queue = message.header('queue');
      const reason = message.header('reason');
      if (queue !== undefined) {
        const worker = this.#workers.get(workerKey(channel, queue));
        if (worker) this.#forgetWorker(worker);
      } else {
        const subscription = this.#subscriptions.get(channel);
        this.#subscriptions.delete(channel);
        if (subscription) {
          const error = new LhttpError(Number(message.header('status')) || 0, reason ?? 'unsubscribed by the server', message);
          this.#endObjectsOf(subscription, { source: 'server', reason, status: error.status, error });
        }
      }
      this.#emit('unsubscribed', { channel, queue, reason });
      return;
    }
    const answered = this.#answered(message);
    // After the answer, so that the objects of the channel are `subscribed` when they hear of it.
    if (gap) this.#reportGap(gap);
    if (answered) return;
    const channel = message.header('publish');
    // A queue-group delivery (`queue` and `delivery-id`, added by the server) belongs to the
    // serve() loop of that group; a plain subscription of the same channel gets its own copy.
    const group = message.header('queue');
    if (channel !== undefined && group !== undefined && message.header('delivery-id') !== undefined) {
      const worker = this.#workers.get(workerKey(channel, group));
      if (worker) {
        this.#delivered(worker, message);
        return;
      }
    }
    if (message.command === 'error' && channel === undefined) {
      this.#emit('error', { error: errorFrom(message), source: 'server' });
    }
    const subscription = channel !== undefined && this.#subscriptions.get(channel);
    if (subscription && !this.#isNew(subscription, message)) return;
    const targets = subscription ? [subscription] : [];
    if (channel !== undefined) {
      // Wildcard subscriptions (`sensor.*.temp`) receive the concrete channels they match.
      for (const [name, other] of this.#subscriptions) {
        if (other !== subscription && isPattern(name) && patternMatches(name, channel)) {
          targets.push(other);
        }
      }
    }
    for (const target of targets) {
      for (const handler of [...target.handlers]) {
        try {
          handler(message, this);
        } catch (error) {
          this.#emit('error', { error, source: 'handler' });
        }
      }
      for (const link of [...target.objects]) link.deliver(message);
    }
    this.#emit('message', { message });
  }

  /**
   * Settles the request `message` answers, if it is an answer: true then. An answer carries our
   * request-id and no `publish` header; a published copy of someone's request carries its
   * request-id too, but also the channel it came through.
   */
  #answered(message) {
    const id = message.header('request-id');
    const request = id !== undefined && message.header('publish') === undefined && this.#pending.get(id);
    if (!request) return false;
    // `partial:true` announces more answers (a streamed reply): the request stays pending,
    // and its deadline moves back like the server's does.
    if (message.command !== 'error' && message.header('partial') === 'true') {
      this.#armTimer(id, request);
      if (request.onPartial) {
        try {
          request.onPartial(message);
        } catch (error) {
          this.#emit('error', { error, source: 'handler' });
        }
      }
      return true;
    }
    this.#pending.delete(id);
    if (request.history !== undefined && message.command === 'history') {
      this.#startReading(request, message);
      return true;
    }
    clearTimeout(request.timer);
    if (message.command === 'error') {
      request.reject(errorFrom(message));
    } else {
      // Synchronously, unlike the promise: the messages that follow the answer (in the same
      // frame batch) must find their subscription confirmed.
      request.onAnswer?.(message);
      request.resolve(message);
    }
    return true;
  }

  /**
   * Whether `message`, a delivery to `subscription`, is one it has not had yet; remembers its
   * position. On a channel that keeps history every message has an offset, and one at or
   * before the last in the same epoch is a copy already delivered.
   */
  #isNew(subscription, message) {
    const offset = message.header('offset');
    const epoch = message.header('epoch');
    if (offset === undefined || epoch === undefined) return true;
    const position = Number(offset);
    if (!Number.isSafeInteger(position)) return true;
    if (epoch === subscription.epoch && position <= subscription.offset) return false;
    subscription.epoch = epoch;
    subscription.offset = position;
    return true;
  }

  /**
   * A `subscribed` answer: the channel's epoch and last offset, and how many of its messages
   * follow. The subscription continues from the first of those. Returns the gap to report when
   * the server could not send everything after `since` (`recovered:false`), else null.
   */
  #caughtUp(answer) {
    const channel = answer.header('channel');
    const subscription = channel !== undefined && this.#subscriptions.get(channel);
    if (!subscription) return;
    const epoch = answer.header('epoch');
    const last = Number(answer.header('offset') ?? 0);
    const count = Number(answer.header('count') ?? 0);
    const { epoch: lastEpoch, offset: lastOffset } = subscription;
    if (epoch === undefined) {
      // The channel keeps no history (any more): nothing to ask for next time.
      subscription.epoch = undefined;
      subscription.offset = undefined;
    } else if (Number.isSafeInteger(last) && Number.isSafeInteger(count)) {
      // Messages already delivered in this epoch (a subscription asked again) stay delivered.
      const from = last - count;
      if (epoch !== subscription.epoch || !(subscription.offset >= from)) {
        subscription.epoch = epoch;
        subscription.offset = from;
      }
    }
    if (answer.header('recovered') === 'false' && lastEpoch !== undefined) {
      return { subscription, properties: { channel, epoch, offset: last, lastEpoch, lastOffset } };
    }
    return null;
  }

  /** Tells the application, and each object of the channel, of a gap found by #caughtUp. */
  #reportGap({ subscription, properties }) {
    this.#emit('gap', properties);
    for (const link of [...subscription.objects]) link.gap(properties);
  }

  /** A `history` answer to `request`: its messages follow; resolve once they are all here. */
  #startReading(request, answer) {
    const count = Number(answer.header('count') ?? 0);
    const result = [];
    const offset = answer.header('offset');
    const recovered = answer.header('recovered');
    Object.assign(result, {
      channel: answer.header('channel') ?? request.history,
      epoch: answer.header('epoch'),
      offset: offset === undefined ? 0 : Number(offset),
      recovered: recovered === undefined ? undefined : recovered === 'true',
    });
    const finish = () => {
      clearTimeout(request.timer);
      request.resolve(result);
    };
    if (!(count > 0)) {
      finish();
      return;
    }
    const fail = (error) => {
      clearTimeout(request.timer);
      request.reject(error);
    };
    this.#reading = { channel: result.channel, remaining: count, result, finish, fail };
  }

  /** (Re)arms the liveness check to run in `delay` milliseconds (never with pingAfter 0). */
  #armLiveness(delay) {
    clearTimeout(this.#livenessTimer);
    this.#livenessTimer = null;
    if (!(this.#options.pingAfter > 0)) return;
    this.#livenessTimer = setTimeout(() => this.#checkLiveness(), Math.max(0, delay));
  }

  /**
   * Runs when the connection may have been silent for `pingAfter`, or a ping for `pingTimeout`.
   * The timer is not moved at every frame received: it looks at the time of the last one when it
   * fires, and sleeps again for what is left.
   */
  #checkLiveness() {
    this.#livenessTimer = null;
    if (this.#state !== 'open' || !this.#ws) return;
    const { pingAfter, pingTimeout } = this.#options;
    const now = Date.now();
    if (this.#pingSent) {
      if (this.#lastReceived < this.#pingSent) {
        const left = this.#pingSent + pingTimeout - now;
        if (left > 0) this.#armLiveness(left);
        else this.#abandon('no answer to ping');
        return;
      }
      this.#pingSent = 0;
    }
    const silent = now - this.#lastReceived;
    if (silent < pingAfter) {
      this.#armLiveness(pingAfter - silent);
      return;
    }
    this.#pingSent = now;
    // The pong is only a sign of life: the timer, not the answer, decides.
    this.#ask(new Message('ping'), { wait: null }).catch(() => {});
    this.#armLiveness(pingTimeout);
  }

  /**
   * Gives up on a connection that no longer answers: its socket may never report anything (a
   * silent network path), so it is closed without waiting for a close handshake, and the client
   * goes on as after any lost connection.
   */
  #abandon(reason) {
    const ws = this.#ws;
    this.#ws = null;
    try {
      if (typeof ws.terminate === 'function') ws.terminate();
      else ws.close(4000, reason);
    } catch {
      // Already closing: its events are ignored from now on.
    }
    this.#closed(1006, reason);
  }

  /**
   * Sends a message as is. While the client is not connected the frame is queued and sent after
   * the next connection is established (and its subscriptions restored).
   *
   * @param {Message | {command: string, headers?: any, body?: string | Uint8Array} | string | Uint8Array} message
   *   a message, or an already encoded frame
   * @throws {TypeError} for a message that cannot be encoded
   * @throws {LhttpError} after close(), or when the queue is full
   */
  send(message) {
    const frame = typeof message === 'string' || message instanceof Uint8Array ? message : encode(message);
    this.#transmit(frame, undefined);
  }

  /** Sends `frame` now (true) or queues it for the next connection (false). */
  #transmit(frame, id) {
    if (this.#stopped) throw this.#failure ?? new LhttpError(0, 'client closed');
    if (this.#ws && this.#ws.readyState === OPEN && this.#state === 'open') {
      this.#ws.send(frame);
      return true;
    }
    if (this.#outbox.length < this.#options.maxQueue) {
      this.#outbox.push({ frame, id });
      return false;
    }
    throw new LhttpError(0, 'send queue full while disconnected');
  }

  /**
   * Sends a request and waits for its answer. Two forms:
   *
   * - `request(message, {timeout, onPartial})`: sends `message` with a fresh `request-id` and
   *   waits for the server's answer (`ok`, a processor's reply, or the terminal answer of a
   *   request the message makes itself with `publish` and `reply-to`).
   * - `request(channel, body, {timeout, headers, command, atLeastOnce, onPartial})`: a request
   *   to whoever serves `channel` (subscribers or a queue group, see serve()): sends
   *   `publish:<channel>`, `reply-to:`, `request-id` and `timeout:<ms>`, and resolves with the
   *   one terminal answer the server guarantees.
   *
   * Answers with `partial:true` (a streamed reply) go to `onPartial(message)` and push the
   * deadline back; the first answer without it settles the promise.
   *
   * @param {string | Message | {command: string, headers?: any, body?: string | Uint8Array}} target
   * @param {any} [bodyOrOptions] the body (channel form) or the options (message form)
   * @param {object} [options] channel form only
   * @param {number} [options.timeout] milliseconds; default: the client's requestTimeout. In the
   *   channel form it is the server's timeout (`timeout` header), and the client waits a little
   *   longer, so that the server's 504 normally arrives first
   * @param {string} [options.command="request"] channel form: the command responders receive
   * @param {any} [options.headers] channel form: more headers, after the request's own (names
   *   of the request's own headers are ignored: use the options)
   * @param {boolean} [options.atLeastOnce=false] channel form: `delivery:at-least-once`, so a
   *   queue-group member that disconnects hands the request to another instead of a 502
   * @param {(message: Message) => void} [options.onPartial] called for each partial answer
   * @returns {Promise<Message>} the answer
   * @throws {LhttpError} the server's `error` answer (status, reason: 503 no responders, 504
   *   timeout, 502 worker gone, or the responder's own `error` reply), or status 0 on a local
   *   timeout or when the connection closes first
   */
  request(target, bodyOrOptions, options) {
    if (typeof target !== 'string') {
      const { timeout = this.#options.requestTimeout, onPartial } = bodyOrOptions ?? {};
      return this.#ask(new Message(target.command, target.headers, target.body), { wait: timeout, onPartial });
    }
    checkChannel(target);
    const { timeout = this.#options.requestTimeout, onPartial } = options ?? {};
    if (!Number.isInteger(timeout) || timeout < 1) throw new TypeError('timeout must be a positive integer (ms)');
    const headers = [['publish', target], ['reply-to', ''], ['timeout', String(timeout)]];
    if (options?.atLeastOnce) headers.push(['delivery', 'at-least-once']);
    // The request's own headers come from the arguments; the same names among `headers` would
    // contradict them (the server acts on the first), so they are left out.
    const own = new Set(['publish', 'reply-to', 'request-id', 'timeout', 'delivery']);
    const extra = headerList(options?.headers).filter(([name]) => !own.has(name.toLowerCase()));
    const message = new Message(options?.command ?? 'request', [...headers, ...extra], bodyOrOptions ?? '');
    // The server's timeout comes first; the client's own timer only catches a lost answer.
    return this.#ask(message, { wait: timeout + Math.max(1000, Math.round(timeout / 10)), onPartial });
  }

  /**
   * Sends `message` with a fresh `request-id` and waits for the answer carrying it.
   * `wait`: milliseconds before a local timeout (null: no local timeout). `history`: the
   * channel of a history read, whose answer is followed by its messages. `onAnswer(answer)`:
   * called with an answer that is not an error as soon as it is received, before anything
   * received after it.
   */
  #ask(message, { wait, onPartial, history, onAnswer }) {
    const id = `${this.#idPrefix}-${this.#nextId++}`;
    message.setHeader('request-id', id);
    return new Promise((resolve, reject) => {
      const request = { resolve, reject, timer: null, wait, onPartial, history, onAnswer, sent: false };
      this.#pending.set(id, request);
      this.#armTimer(id, request);
      try {
        request.sent = this.#transmit(encode(message), id);
      } catch (error) {
        clearTimeout(request.timer);
        this.#pending.delete(id);
        reject(error);
      }
    });
  }

  /** (Re)starts the local timeout of a pending request. */
  #armTimer(id, request) {
    clearTimeout(request.timer);
    if (request.wait == null) return;
    request.timer = setTimeout(() => {
      this.#pending.delete(id);
      // Given up on: a frame still queued is never sent.
      if (!request.sent) this.#outbox = this.#outbox.filter((entry) => entry.id !== id);
      request.reject(new LhttpError(0, 'timeout'));
    }, request.wait);
  }

  /**
   * Asks the server for this connection's private inbox address (`_inbox.<hex>`). Messages
   * published to it reach this connection only, as `message` events with `publish:<address>`.
   * A new connection (after a reconnection) has a new inbox.
   *
   * @returns {Promise<string>}
   */
  async inbox() {
    const answer = await this.request(new Message('inbox'));
    const address = answer.header('inbox');
    if (!address) throw new LhttpError(0, 'no inbox address in the answer', answer);
    return address;
  }

  /**
   * Serves the requests and messages of `channel` as a member of queue group `queue`: each one
   * published to the channel goes to one member of the group. For each delivery,
   * `await handler(message, reply)` runs; what it returns is the reply, published to the
   * request's `reply-to` together with the acknowledgement (`ack:<delivery-id>`); a message that
   * is not a request is just acknowledged. A reply is a Message, `{status, command, headers,
   * body}` (status becomes the `status` header; `http-<name>` headers are HTTP response headers
   * for gateway requests), a string or bytes (the body), or nothing (an empty reply).
   * `reply.partial(answer)` sends a partial reply (`partial:true`) first, for streamed answers.
   * A handler that throws answers `error` with `status:500` and `reason:handler failed` (and
   * an `error` event with source "handler" reports the exception).
   *
   * At most `credit` handlers run at once; the server hands out no more than that either. The
   * membership is restored after every reconnection.
   *
   * @param {string} channel
   * @param {string} queue the group's name: 1 to 128 letters, digits, `.`, `_`, `-`
   * @param {(message: Message, reply: {partial: (answer: any) => boolean, client: LhttpClient}) => any} handler
   * @param {{credit?: number}} [options] credit: deliveries held at once (default 1)
   * @returns {Promise<{channel: string, queue: string, drain: () => Promise<void>, stop: () => Promise<void>}>}
   *   once the server confirmed the membership; rejects with LhttpError if it refused
   */
  serve(channel, queue, handler, options = {}) {
    checkChannel(channel);
    if (typeof queue !== 'string' || !/^[A-Za-z0-9._-]{1,128}$/.test(queue)) {
      throw new TypeError(`invalid queue group name: ${JSON.stringify(queue)}`);
    }
    if (typeof handler !== 'function') throw new TypeError('serve needs a handler function');
    const credit = options.credit ?? 1;
    if (!Number.isInteger(credit) || credit < 1) throw new TypeError('credit must be a positive integer');
    const key = workerKey(channel, queue);
    if (this.#workers.has(key)) throw new TypeError(`already serving ${channel} in group ${queue}`);
    const worker = { channel, queue, credit, handler, running: 0, backlog: [], idle: [] };
    worker.joined = new Promise((resolve, reject) => Object.assign(worker, { resolve, reject }));
    worker.joined.catch(() => {}); // reported as an `error` event as well
    worker.control = {
      channel,
      queue,
      drain: () => this.#drainWorker(worker),
      stop: () => this.#stopWorker(worker),
    };
    this.#workers.set(key, worker);
    if (this.#state === 'open') this.#joinOnServer(worker);
    return worker.joined.then(() => worker.control);
  }

  async #joinOnServer(worker) {
    const { channel, queue, credit } = worker;
    const message = new Message('subscribe', [['subscribe', channel], ['queue', queue], ['credit', String(credit)]]);
    try {
      await this.request(message);
      worker.resolve();
    } catch (error) {
      if (error.reason === 'connection closed' || error.reason === 'client closed') return;
      this.#forgetWorker(worker);
      worker.reject(error);
      this.#emit('error', { error, source: 'subscribe', channel });
    }
  }

  #forgetWorker(worker) {
    const key = workerKey(worker.channel, worker.queue);
    if (this.#workers.get(key) === worker) this.#workers.delete(key);
  }

  /** Leaves the group once the work in hand is done: resolves at the server's `drained`. */
  async #drainWorker(worker) {
    if (worker.leaving) return worker.left;
    // Deliveries already on their way still reach the handler (the server waits for their
    // acknowledgements), but the group is not joined again after a reconnection.
    worker.leaving = true;
    const leave = async () => {
      try {
        if (this.#state !== 'open') return await this.#idle(worker);
        const message = new Message('drain', [['drain', worker.channel], ['queue', worker.queue]]);
        // `drained` comes when every delivery is acknowledged, however long the handlers take.
        await this.#ask(message, { wait: null });
      } finally {
        this.#forgetWorker(worker);
      }
    };
    worker.left = leave();
    return worker.left;
  }

  /** Leaves the group now: the server hands what this member holds to others (or 502). */
  async #stopWorker(worker) {
    if (worker.stopped) return;
    worker.leaving = true;
    worker.stopped = true; // replies of handlers still running would come too late
    worker.backlog = [];
    try {
      if (this.#state !== 'open') return;
      await this.request(new Message('unsubscribe', [['unsubscribe', worker.channel], ['queue', worker.queue]]));
    } finally {
      this.#forgetWorker(worker);
    }
  }

  #idle(worker) {
    if (worker.running === 0) return Promise.resolve();
    return new Promise((resolve) => worker.idle.push(resolve));
  }

  #delivered(worker, message) {
    if (worker.stopped) return; // the server hands it to another member when we leave
    const delivery = { message, connection: this.#connection };
    if (worker.running < worker.credit) this.#work(worker, delivery);
    else worker.backlog.push(delivery);
  }

  async #work(worker, { message, connection }) {
    worker.running += 1;
    const replyTo = message.header('reply-to');
    const ack = message.header('delivery-id');
    // Frames for a connection that has ended are dropped: its delivery ids mean nothing to the
    // next connection, and the server has already answered or handed on the work.
    const current = () => !worker.stopped && this.#connection === connection && this.#state === 'open';
    let finished = false;
    const reply = {
      client: this,
      partial: (answer) => {
        if (finished) throw new Error('partial reply after the final reply');
        if (replyTo === undefined || !current()) return false;
        const partial = replyMessage(answer, replyTo);
        partial.setHeader('partial', 'true');
        this.send(partial);
        return true;
      },
    };
    let answer;
    try {
      answer = await worker.handler(message, reply);
    } catch (error) {
      this.#emit('error', { error, source: 'handler', channel: worker.channel });
      answer = new Message('error', [['status', '500'], ['reason', 'handler failed']]);
    }
    finished = true;
    try {
      if (current()) {
        let final;
        if (replyTo === undefined) final = new Message('ack', [['ack', ack]]);
        else {
          final = replyMessage(answer, replyTo);
          final.removeHeader('partial');
          final.addHeader('ack', ack);
        }
        this.send(final);
      }
    } catch (error) {
      // A reply that cannot be encoded: answer 500 rather than leave the requester waiting.
      this.#emit('error', { error, source: 'handler', channel: worker.channel });
      const failed = new Message('error', [['status', '500'], ['reason', 'invalid reply']]);
      try {
        if (replyTo !== undefined) this.send(replyMessage(failed, replyTo).addHeader('ack', ack));
        else this.send(new Message('ack', [['ack', ack]]));
      } catch {
        // Closed meanwhile: nothing to acknowledge any more.
      }
    } finally {
      worker.running -= 1;
      const next = worker.backlog.shift();
      if (next) this.#work(worker, next);
      else if (worker.running === 0) for (const resolve of worker.idle.splice(0)) resolve();
    }
  }

  /**
   * Subscribes to `channel`: `handler(message, client)` is called for every message published to
   * it. Subscribing again to a channel adds a handler without asking the server again, and so
   * does a Subscription object of the channel (newSubscription()), which shares it. The
   * subscription is restored after every reconnection; on a channel that keeps history, with
   * the messages missed meanwhile (each message once, in order), or a `gap` event when the
   * server no longer has them all.
   *
   * With `recent: n` the server first sends the last `n` messages it keeps of the channel (none
   * when it keeps no history), to the handler like live ones, then the live ones: what a page
   * that just opened shows. `recent: 0` sends none but lets the client recover from the moment
   * of subscribing, before the first message. It applies when the subscription is made (the
   * first subscribe of the channel).
   *
   * On a channel with presence, `presenceInfo` is the text other members see for this client
   * in presence() lists and `join`/`leave` messages (also after a reconnection); such messages
   * reach the handler like any other (tell them by `message.command`).
   *
   * @param {string} channel
   * @param {(message: Message, client: LhttpClient) => void} handler
   * @param {{recent?: number, presenceInfo?: string}} [options]
   * @returns {Promise<Message>} resolves with the server's answer once it confirmed: `ok`, or
   *   with `recent`, `subscribed` (with `epoch` and `offset` when the channel keeps history,
   *   and `count`); rejects with LhttpError if it refused (the subscription is then dropped),
   *   or on timeout
   */
  subscribe(channel, handler, options = {}) {
    checkChannel(channel);
    if (typeof handler !== 'function') throw new TypeError('subscribe needs a handler function');
    const subscription = this.#record(channel, subscribeOptions(options));
    subscription.handlers.add(handler);
    return subscription.promise;
  }

  /**
   * A new Subscription object for `channel`, unsubscribed until its subscribe() is called: add
   * its listeners first. Every call makes a new object; objects and subscribe() callbacks of one
   * channel share one subscription on the server (see Subscription).
   *
   * @param {string} channel a channel or a wildcard pattern
   * @param {{recent?: number, presenceInfo?: string, buffer?: number}} [options] `recent` and
   *   `presenceInfo` as subscribe() takes them (they apply when the channel's subscription is
   *   made: by the first object or callback of the channel); `buffer`: messages each async
   *   iterator of the object holds for a consumer that has not taken them yet (default 1000)
   * @returns {Subscription}
   */
  newSubscription(channel, options = {}) {
    checkChannel(channel);
    const checked = subscribeOptions(options);
    const { buffer = DEFAULT_ITERATOR_BUFFER } = options ?? {};
    if (!(Number.isSafeInteger(buffer) && buffer >= 1)) throw new TypeError('buffer must be a positive whole number of messages');
    return new Subscription(CREATE_SUBSCRIPTION, this, channel, buffer, {
      join: (link) => {
        // No connection will come to send it on.
        if (this.#stopped) throw this.#failure ?? new LhttpError(0, 'client closed');
        if (this.#state === 'closed' && !this.#options.reconnect) throw new LhttpError(0, 'connection closed');
        const subscription = this.#record(channel, checked);
        subscription.objects.add(link);
        return subscription;
      },
      leave: (link) => {
        const subscription = this.#subscriptions.get(channel);
        if (!subscription?.objects.delete(link)) return Promise.resolve();
        if (subscription.handlers.size > 0 || subscription.objects.size > 0) return Promise.resolve();
        return this.#leave(channel, subscription);
      },
    });
  }

  /** The record of `channel`, made (and sent, when connected) with `options` if there is none. */
  #record(channel, { recent, presenceInfo }) {
    let subscription = this.#subscriptions.get(channel);
    if (!subscription) {
      subscription = { handlers: new Set(), objects: new Set(), recent, presenceInfo, confirmed: false };
      subscription.promise = new Promise((resolve, reject) => Object.assign(subscription, { resolve, reject }));
      subscription.promise.catch(() => {}); // reported as an `error` event as well
      this.#subscriptions.set(channel, subscription);
      if (this.#state === 'open') this.#subscribeOnServer(channel);
    }
    return subscription;
  }

  /** Forgets the record of `channel` and tells the server (when connected). */
  async #leave(channel, subscription) {
    this.#subscriptions.delete(channel);
    subscription.resolve(); // a subscribe still waiting for its answer need not wait any longer
    if (this.#state !== 'open') return; // the next connection will not restore it
    await this.request(new Message('unsubscribe', [['unsubscribe', channel]]));
  }

  /** Ends every Subscription object (`ending`: what their `unsubscribed` event says). */
  #endObjects(ending) {
    for (const [channel, subscription] of this.#subscriptions) {
      if (subscription.objects.size === 0) continue;
      this.#endObjectsOf(subscription, ending);
      if (subscription.handlers.size === 0 && this.#subscriptions.get(channel) === subscription) {
        this.#subscriptions.delete(channel);
      }
    }
  }

  #endObjectsOf(subscription, ending) {
    const links = [...subscription.objects];
    subscription.objects.clear();
    for (const link of links) link.ended(ending);
  }

  async #subscribeOnServer(channel) {
    const subscription = this.#subscriptions.get(channel);
    const message = new Message('subscribe', [['subscribe', channel]]);
    if (subscription.presenceInfo) message.addHeader('presence-info', subscription.presenceInfo);
    // Back after a lost connection: from the last message received, when the channel keeps
    // history; the server answers `subscribed` and sends what came after it.
    if (subscription.epoch !== undefined) {
      message.addHeader('since', subscription.offset).addHeader('epoch', subscription.epoch);
    } else if (subscription.recent !== undefined) {
      message.addHeader('recent', subscription.recent);
    }
    const onAnswer = (answer) => {
      if (this.#subscriptions.get(channel) !== subscription) return; // left meanwhile
      subscription.confirmed = true;
      subscription.answer = answer;
      for (const link of [...subscription.objects]) link.confirmed(answer);
    };
    try {
      subscription.resolve(await this.#ask(message, { wait: this.#options.requestTimeout, onAnswer }));
    } catch (error) {
      // A dropped connection is retried on the next one (close() settles the promise itself);
      // a refusal or a timeout is final.
      if (error.reason === 'connection closed' || error.reason === 'client closed') return;
      if (this.#subscriptions.get(channel) === subscription) this.#subscriptions.delete(channel);
      subscription.reject(error);
      this.#emit('error', { error, source: 'subscribe', channel });
      const links = [...subscription.objects];
      subscription.objects.clear();
      for (const link of links) link.failed(error);
    }
  }

  /**
   * Reads the history the server keeps of `channel`, without subscribing: the last `recent`
   * messages, or those after offset `since` of epoch `epoch` (a position taken from a message's
   * `offset` and `epoch` headers). The connection needs the right to subscribe to the channel.
   *
   * @param {string} channel
   * @param {{recent: number} | {since: number, epoch: string}} query
   * @returns {Promise<Message[] & {channel: string, epoch?: string, offset: number, recovered?: boolean}>}
   *   the messages, oldest first, exactly as subscribers received them; and the channel's
   *   `epoch` (undefined when it keeps no history) and last `offset` now, and with `since`,
   *   `recovered`: false when some messages after `since` are no longer kept (none is then
   *   returned)
   * @throws {LhttpError} the server's refusal (403 not allowed, 400), or status 0 on a timeout or
   *   a lost connection
   */
  history(channel, query) {
    checkChannel(channel);
    const { recent, since, epoch } = query ?? {};
    const headers = [['channel', channel]];
    if (recent !== undefined) {
      if (!(Number.isSafeInteger(recent) && recent >= 0)) throw new TypeError('recent must be a whole number of messages');
      headers.push(['recent', String(recent)]);
    } else if (since !== undefined) {
      if (!(Number.isSafeInteger(since) && since >= 0)) throw new TypeError('since must be an offset (a whole number)');
      if (typeof epoch !== 'string' || epoch === '') throw new TypeError('since needs the epoch its offset belongs to');
      headers.push(['since', String(since)], ['epoch', epoch]);
    } else {
      throw new TypeError('history needs {recent} or {since, epoch}');
    }
    return this.#ask(new Message('history', headers), { wait: this.#options.requestTimeout, history: channel });
  }

  /**
   * Asks who is in `channel` (a channel whose server config has `presence`): the member count
   * and at most `limit` members (the server's cap by default; 0 for the count alone). Needs
   * the right to subscribe to the channel.
   *
   * @param {string} channel
   * @param {{limit?: number}} [options]
   * @returns {Promise<{channel: string, count: number, listed: number, you: string,
   *   members: Array<{client: string, user: string, info: string}>}>} `you` is this
   *   connection's own client id, so that it can find itself among the members
   * @throws {LhttpError} the server's refusal (404 no presence, 403 not allowed), or status 0
   *   on a timeout or a lost connection
   */
  async presence(channel, options = {}) {
    checkChannel(channel);
    const { limit } = options ?? {};
    const headers = [['channel', channel]];
    if (limit !== undefined) {
      if (!(Number.isSafeInteger(limit) && limit >= 0)) throw new TypeError('limit must be a whole number of members');
      headers.push(['limit', String(limit)]);
    }
    const answer = await this.request(new Message('presence', headers));
    const members = JSON.parse(answer.text || '[]');
    return {
      channel,
      count: Number(answer.header('count') ?? 0),
      listed: Number(answer.header('listed') ?? members.length),
      you: answer.header('client') ?? '',
      members,
    };
  }

  /**
   * Removes `handler` from `channel`, or every handler when none is given; the server is told
   * once no handler is left, nor any Subscription object of the channel (those are not touched:
   * each leaves by its own unsubscribe()).
   *
   * @param {string} channel
   * @param {Function} [handler]
   * @returns {Promise<void>} resolves once the server confirmed (at once when not connected, or
   *   when objects still hold the channel)
   */
  async unsubscribe(channel, handler) {
    const subscription = this.#subscriptions.get(channel);
    if (!subscription) return;
    if (handler) subscription.handlers.delete(handler);
    else subscription.handlers.clear();
    if (subscription.handlers.size > 0 || subscription.objects.size > 0) return;
    await this.#leave(channel, subscription);
  }

  /**
   * Publishes `body` to `channel` (several channels: separated by spaces, or an array).
   *
   * @param {string | string[]} channel
   * @param {string | Uint8Array} [body]
   * @param {object} [options]
   * @param {string} [options.command="chat"] the command subscribers receive
   * @param {any} [options.headers] more headers, in order, after `publish`
   * @param {boolean} [options.ack=false] ask the server to confirm (a request)
   * @returns {undefined | Promise<Message>} with `ack`, the server's answer
   */
  publish(channel, body = '', options = {}) {
    const channels = Array.isArray(channel) ? channel : String(channel).split(' ').filter(Boolean);
    if (channels.length === 0) throw new TypeError('publish needs a channel');
    channels.forEach(checkChannel);
    const headers = [['publish', channels.join(' ')], ...headerList(options.headers)];
    const message = new Message(options.command ?? 'chat', headers, body);
    if (options.ack) return this.request(message);
    this.send(message);
    return undefined;
  }

  /**
   * Closes the connection for good: no reconnection; pending requests are rejected, and every
   * Subscription object becomes `unsubscribed` (source "client", reason "client closed") at once.
   *
   * @param {number} [code=1000]
   * @param {string} [reason]
   * @returns {Promise<void>} resolves when the connection is closed
   */
  close(code = 1000, reason = '') {
    this.#stopped = true;
    this.#outbox = [];
    clearTimeout(this.#livenessTimer);
    this.#livenessTimer = null;
    // Subscriptions still waiting for the server will not get an answer any more.
    for (const subscription of this.#subscriptions.values()) subscription.reject(new LhttpError(0, 'client closed'));
    const stopped = new LhttpError(0, 'client closed');
    this.#endObjects({ source: 'client', reason: 'client closed', status: 0, error: stopped });
    for (const worker of this.#workers.values()) worker.reject(new LhttpError(0, 'client closed'));
    if (this.#retryTimer) {
      clearTimeout(this.#retryTimer);
      this.#retryTimer = null;
    }
    const ws = this.#ws;
    if (!ws) {
      // Between attempts, or still loading the WebSocket class: nothing to close.
      if (this.#state !== 'closed') this.#closed(code, reason);
      this.#settleOpened.reject(new LhttpError(0, 'client closed'));
      for (const [id, request] of this.#pending) {
        clearTimeout(request.timer);
        this.#pending.delete(id);
        request.reject(new LhttpError(0, 'client closed'));
      }
      return Promise.resolve();
    }
    return new Promise((resolve) => {
      this.addEventListener('close', () => resolve(), { once: true });
      ws.close(code, reason);
    });
  }
}

// Only LhttpClient.newSubscription() makes Subscription objects: they live on its records.
const CREATE_SUBSCRIPTION = Symbol('lhttp subscription');

// Messages an async iterator of a Subscription holds for a consumer that has not taken them yet.
// A consumer that far behind is told so (the iterator throws "slow consumer") rather than
// handed stale messages, or silently fewer, and memory stays bounded.
const DEFAULT_ITERATOR_BUFFER = 1000;

/** Marks `promise` as handled (what it settles with is also reported by events) and returns it. */
function handled(promise) {
  promise.catch(() => {});
  return promise;
}

/** The figures of a subscribe answer, as `subscribed` events carry them. */
function answerFigures(answer) {
  const number = (name) => {
    const value = answer?.header(name);
    return value === undefined ? undefined : Number(value);
  };
  const recovered = answer?.header('recovered');
  return {
    epoch: answer?.header('epoch'),
    offset: number('offset'),
    count: number('count'),
    recovered: recovered === undefined ? undefined : recovered === 'true',
  };
}

/**
 * A subscription to one channel as an object with its own state and events, made by
 * `client.newSubscription(channel, options)`. It starts `unsubscribed`; subscribe() makes it
 * `subscribing`, then `subscribed` once the server confirmed. A lost connection makes it
 * `subscribing` again until the subscription is restored (on a channel that keeps history, with
 * the messages missed meanwhile, or a `gap`). It ends `unsubscribed`: by its own unsubscribe(),
 * the client's close(), a refusal, the server, or a connection given up.
 *
 * Objects and subscribe() callbacks of one channel share the client's one subscription of it:
 * the server is asked once, each receives every message, and the server is told only when the
 * last of them leaves.
 *
 * Events (addEventListener, or on/off; each an LhttpEvent with `channel`):
 * - `subscribing`: ({reconnecting}: true when a lost connection is the cause)
 * - `subscribed`: the server confirmed ({answer}: its answer, `ok` or `subscribed`, and from it
 *   {epoch, offset, count} when the channel keeps history and `recovered` after a recovery).
 *   An object joining a channel already subscribed gets the answer the channel had.
 * - `message`: every message of the channel ({message}), as subscribe() handlers get them
 * - `gap`: after a reconnection the server could not send every message missed
 *   ({epoch, offset, lastEpoch, lastOffset}, as the client's `gap` event)
 * - `error`: the subscribe failed ({error, source: "subscribe"}); `unsubscribed` follows
 * - `unsubscribed`: ({source, reason, status, error}): source "client" (this object's
 *   unsubscribe(), reason "unsubscribe"; or the client's close(), reason "client closed"),
 *   "refused" (the server refused the subscribe: status and reason, e.g. 403; or no answer in
 *   requestTimeout: status 0, reason "timeout"), "server" (the server ended it, with its
 *   reason) or "closed" (the connection ended and will not come back: error)
 *
 * `for await (const message of subscription)` reads the messages (and subscribes the object
 * if it is not). Each iterator holds at most `buffer` messages (newSubscription's option,
 * default 1000) that its consumer has not taken yet: when one more comes, the iterator stops
 * taking messages, yields those it holds, then throws LhttpError reason "slow consumer"; the
 * subscription itself goes on. Iterating ends when the subscription ends: plainly by the
 * client's doing (unsubscribe(), close()), by throwing the `unsubscribed` event's error
 * otherwise. Leaving the loop (break) ends the iteration, not the subscription.
 */
export class Subscription extends Emitter {
  #client;
  #channel;
  #buffer;
  #link; // {join, leave}: the client's side, which keeps the channel's record
  #self; // this object's side, held by the channel's record while joined
  #record = null; // the client's record of the channel, while joined
  #left = null; // the position of the record when this object left it
  #state = 'unsubscribed';
  #answer; // the server's answer, while subscribed
  #attempt = null; // {promise, resolve, reject} while subscribing
  #waiting = new Set(); // ready() calls: {resolve, reject}
  #iterators = new Set(); // async iterators running: {push, finish}

  /** Made by client.newSubscription(); not to be constructed directly. */
  constructor(key, client, channel, buffer, link) {
    if (key !== CREATE_SUBSCRIPTION) throw new TypeError('a Subscription is made by client.newSubscription(channel)');
    super();
    this.#client = client;
    this.#channel = channel;
    this.#buffer = buffer;
    this.#link = link;
    this.#self = {
      confirmed: (answer) => this.#confirmed(answer),
      lost: () => this.#lost(),
      deliver: (message) => this.#deliver(message),
      gap: (properties) => this.#emit('gap', properties),
      failed: (error) => this.#failed(error),
      ended: (ending) => this.#ended(ending),
    };
  }

  /** The LhttpClient this subscription belongs to. */
  get client() {
    return this.#client;
  }

  /** The channel (or wildcard pattern). */
  get channel() {
    return this.#channel;
  }

  /** "unsubscribed", "subscribing" or "subscribed". */
  get state() {
    return this.#state;
  }

  /**
   * On a channel that keeps history, where the channel's subscription stands: `{epoch, offset}`
   * of the last message received, or of the point it started from (undefined on a channel
   * without history, or before a position is known). After unsubscribing, the last one known.
   */
  get position() {
    const at = this.#record ?? this.#left;
    return at?.epoch === undefined ? undefined : { epoch: at.epoch, offset: at.offset };
  }

  /**
   * Subscribes, unless already subscribed or subscribing (then it returns what the call that
   * started it returned).
   *
   * @returns {Promise<Message | undefined>} resolves with the server's answer once it confirmed
   *   (see `subscribed`), with undefined when unsubscribe() came first; rejects with the
   *   LhttpError of a refusal, of close() ("client closed"), or of a client already closed
   */
  subscribe() {
    if (this.#state === 'subscribed') return Promise.resolve(this.#answer);
    if (this.#state === 'subscribing') return this.#attempt.promise;
    let record;
    try {
      record = this.#link.join(this.#self);
    } catch (error) {
      return handled(Promise.reject(error));
    }
    this.#record = record;
    const attempt = this.#subscribing(false);
    if (record.confirmed) this.#confirmed(record.answer);
    return attempt;
  }

  /**
   * Unsubscribes this object (at once: `unsubscribed` with source "client"). The server is told
   * when no other object nor subscribe() handler holds the channel.
   *
   * @returns {Promise<void>} resolves once the server confirmed, or at once when it need not be
   *   told (or the connection is down: the next one will not restore it)
   */
  unsubscribe() {
    if (this.#state === 'unsubscribed') return Promise.resolve();
    const left = this.#link.leave(this.#self);
    this.#ended({ source: 'client', reason: 'unsubscribe' });
    return handled(
      left.catch((error) => {
        // A connection that ends takes the subscription with it.
        if (error.reason !== 'connection closed' && error.reason !== 'client closed') throw error;
      }),
    );
  }

  /**
   * Waits until the subscription is `subscribed` (at once if it is), e.g. after a reconnection.
   *
   * @param {number} [timeout] milliseconds; 0 or none: no limit
   * @returns {Promise<void>} rejects with LhttpError: the `unsubscribed` event's error (reason
   *   "unsubscribed" when it has none, or when the object is not subscribing at all), or status
   *   0 "timeout"
   */
  ready(timeout) {
    if (timeout !== undefined && !(typeof timeout === 'number' && timeout >= 0)) {
      throw new TypeError('timeout must be a number of milliseconds');
    }
    if (this.#state === 'subscribed') return Promise.resolve();
    if (this.#state === 'unsubscribed') return Promise.reject(new LhttpError(0, 'unsubscribed'));
    return new Promise((resolve, reject) => {
      let timer = null;
      const waiter = {
        resolve() {
          clearTimeout(timer);
          resolve();
        },
        reject(error) {
          clearTimeout(timer);
          reject(error);
        },
      };
      if (timeout > 0) {
        timer = setTimeout(() => {
          this.#waiting.delete(waiter);
          reject(new LhttpError(0, 'timeout'));
        }, timeout);
      }
      this.#waiting.add(waiter);
    });
  }

  /** The messages of the channel, as they come; see the class comment for the buffer's bound. */
  [Symbol.asyncIterator]() {
    const held = []; // messages not taken yet: at most `buffer`
    const readers = []; // next() calls waiting for a message: {resolve, reject}
    let end = null; // {error} once the iteration is over; no error for a plain end
    const finished = () => {
      const { error } = end;
      end.error = undefined; // thrown once, then done
      return error ? Promise.reject(error) : Promise.resolve({ value: undefined, done: true });
    };
    const iterator = {
      push: (message) => {
        if (end) return;
        if (readers.length > 0) {
          readers.shift().resolve({ value: message, done: false });
        } else if (held.length < this.#buffer) {
          held.push(message);
        } else {
          this.#iterators.delete(iterator);
          end = { error: new LhttpError(0, 'slow consumer') };
        }
      },
      finish: (error) => {
        if (end) return;
        this.#iterators.delete(iterator);
        end = { error };
        // Readers wait only while nothing is held.
        for (const reader of readers.splice(0)) finished().then(reader.resolve, reader.reject);
      },
    };
    this.#iterators.add(iterator);
    if (this.#state === 'unsubscribed') this.subscribe().catch((error) => iterator.finish(error));
    return {
      next: () => {
        if (held.length > 0) return Promise.resolve({ value: held.shift(), done: false });
        if (end) return finished();
        return new Promise((resolve, reject) => readers.push({ resolve, reject }));
      },
      return: () => {
        iterator.finish();
        held.length = 0;
        end.error = undefined;
        return Promise.resolve({ value: undefined, done: true });
      },
      [Symbol.asyncIterator]() {
        return this;
      },
    };
  }

  #emit(type, properties) {
    this.dispatchEvent(new LhttpEvent(type, { channel: this.#channel, ...properties }));
  }

  /** Enters `subscribing`; returns the promise that settles when it leaves that state. */
  #subscribing(reconnecting) {
    this.#state = 'subscribing';
    const attempt = {};
    attempt.promise = handled(new Promise((resolve, reject) => Object.assign(attempt, { resolve, reject })));
    this.#attempt = attempt;
    this.#emit('subscribing', { reconnecting });
    return attempt.promise;
  }

  #confirmed(answer) {
    if (this.#state !== 'subscribing') return;
    const attempt = this.#attempt;
    this.#attempt = null;
    this.#state = 'subscribed';
    this.#answer = answer;
    // Settled before the event, so that a listener that changes the state again settles
    // nothing twice; the promises' reactions run after the event anyway.
    attempt.resolve(answer);
    for (const waiter of this.#takeWaiting()) waiter.resolve();
    this.#emit('subscribed', { answer, ...answerFigures(answer) });
  }

  #lost() {
    if (this.#state === 'subscribed') this.#subscribing(true);
  }

  #deliver(message) {
    this.#emit('message', { message });
    for (const iterator of [...this.#iterators]) iterator.push(message);
  }

  #failed(error) {
    this.#emit('error', { error, source: 'subscribe' });
    this.#ended({ source: 'refused', status: error.status, reason: error.reason, error });
  }

  /** Leaves the channel's record (the client has already let go of this object). */
  #ended(ending) {
    if (this.#state === 'unsubscribed') return;
    const record = this.#record;
    this.#left = record && { epoch: record.epoch, offset: record.offset };
    this.#record = null;
    this.#state = 'unsubscribed';
    this.#answer = undefined;
    const attempt = this.#attempt;
    this.#attempt = null;
    if (attempt && ending.error) attempt.reject(ending.error);
    else if (attempt) attempt.resolve(undefined);
    for (const waiter of this.#takeWaiting()) waiter.reject(ending.error ?? new LhttpError(0, 'unsubscribed'));
    const iterators = [...this.#iterators];
    this.#iterators.clear();
    for (const iterator of iterators) iterator.finish(ending.source === 'client' ? undefined : ending.error);
    this.#emit('unsubscribed', ending);
  }

  #takeWaiting() {
    const waiting = [...this.#waiting];
    this.#waiting.clear();
    return waiting;
  }
}

function workerKey(channel, queue) {
  return `${channel}\n${queue}`;
}

// Headers that the server acts on or sets itself: a reply carries none of them but its own
// `publish` (the reply address) and `ack`, whatever a handler put in it.
const ROUTING_HEADERS = new Set([
  'publish', 'subscribe', 'unsubscribe', 'upstream', 'reply-to', 'request-id', 'queue',
  'delivery-id', 'ack', 'credit', 'drain', 'delivery', 'timeout',
]);

/** A handler's answer (a Message, `{status, command, headers, body}`, a body, or nothing) as a reply to `replyTo`. */
function replyMessage(answer, replyTo) {
  let command = 'reply';
  let headers = [];
  let body = '';
  if (answer instanceof Message) ({ command, headers, body } = answer);
  else if (typeof answer === 'string' || answer instanceof Uint8Array || answer instanceof ArrayBuffer) body = answer;
  else if (answer != null && typeof answer === 'object') {
    command = answer.command ?? command;
    headers = headerList(answer.headers);
    body = answer.body ?? '';
    if (answer.status !== undefined) headers = [['status', String(answer.status)], ...headers.filter(([n]) => n.toLowerCase() !== 'status')];
  } else if (answer != null) body = String(answer);
  const kept = headers.filter(([name]) => !ROUTING_HEADERS.has(name.toLowerCase()));
  return new Message(command, [['publish', replyTo], ...kept], body);
}

function errorFrom(message) {
  const status = Number(message.header('status')) || 0;
  return new LhttpError(status, message.header('reason') ?? 'error', message);
}

/**
 * Connects to an lhttp server.
 *
 * @param {string} url a ws:// or wss:// URL
 * @param {object} [options] see LhttpClient
 * @param {number} [options.connectTimeout=10000] milliseconds to wait for the first connection
 *   (its token accepted, when there is one); 0 waits for ever
 * @returns {Promise<LhttpClient>} once the first connection is open (and its token accepted);
 *   rejects with LhttpError: status 0 "connect timeout" when no connection opened in
 *   connectTimeout (the server is down or unreachable), 401 when the token is refused, or the
 *   reason the client gave up (reconnection off, a certificate rejected)
 */
export async function connect(url, options = {}) {
  const client = new LhttpClient(url, options);
  const { connectTimeout = 10000 } = options;
  if (!(connectTimeout > 0)) return client.opened;
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new LhttpError(0, 'connect timeout')), connectTimeout);
  });
  try {
    return await Promise.race([client.opened, late]);
  } catch (error) {
    // Nobody holds this client: it must not go on trying in the background.
    client.close();
    throw error;
  } finally {
    clearTimeout(timer);
  }
}

// ---------------------------------------------------------------------------------------------
// 4. Compatibility with the original SDK
// ---------------------------------------------------------------------------------------------

/**
 * What the original SDK passed to on_open and on_message: the message received (if any), and
 * methods to send. Headers given to one call are used for that call only (the original piled
 * them up across sends).
 */
export class LhttpContext {
  #client;
  #message;
  #command = null;
  #headers = [];

  constructor(client, message = null) {
    this.#client = client;
    this.#message = message;
  }

  /** The received message (a Message), or null in on_open. */
  get message() {
    return this.#message;
  }

  /** The received command, or "" in on_open. */
  getCommand() {
    return this.#message ? this.#message.command : '';
  }

  /** The value of the received header called `name` (case-insensitive), or null. */
  getHeader(name) {
    return this.#message?.header(name) ?? null;
  }

  /** Every received header as a plain object. */
  getHeaders() {
    return this.#message ? this.#message.headersObject() : {};
  }

  /** The received body as text, or "" in on_open. */
  getBody() {
    return this.#message ? this.#message.text : '';
  }

  /** Sets the command of the next send() (default: the received command, or "chat"). */
  setCommand(command) {
    this.#command = command;
    return this;
  }

  /** Adds a header to the next send() only. */
  addHeader(name, value) {
    this.#headers.push([name, String(value)]);
    return this;
  }

  /** Sends `body` with the command and headers set on this context; then forgets the headers. */
  send(body = '') {
    const command = this.#command ?? (this.#message ? this.#message.command : 'chat');
    const headers = this.#headers;
    this.#headers = [];
    this.#client.send(new Message(command, headers, body ?? ''));
  }

  #sendWith(builtin, channel, command, headers, body) {
    const all = [[builtin, Array.isArray(channel) ? channel.join(' ') : channel], ...headerList(headers)];
    this.#client.send(new Message(command ?? 'chat', all, body ?? ''));
  }

  /** Publishes: `LHTTP/1.0 <command>`, `publish:<channel>`, the given headers, the body. */
  publish(channel, command, headers, body) {
    this.#sendWith('publish', channel, command, headers, body);
  }

  /** Subscribes; the message may carry other headers and a body like any other. */
  subscribe(channel, command, headers, body) {
    this.#sendWith('subscribe', channel, command, headers, body);
  }

  /** Unsubscribes. */
  unsubscribe(channel, command, headers, body) {
    this.#sendWith('unsubscribe', channel, command, headers, body);
  }
}

/**
 * The original SDK's entry point: assign on_open, on_message, on_close and on_error, each called
 * with a context (on_close and on_error with the event too).
 *
 * Unlike LhttpClient it does not reconnect unless told to ({reconnect: true}), because code
 * written for the original subscribes in on_open; on_open then runs again after every
 * reconnection.
 *
 * @example
 *   const lhttp = new Lhttp('ws://127.0.0.1:8081/');
 *   lhttp.on_open = (context) => context.subscribe('chatroom', 'chat', null, '');
 *   lhttp.on_message = (context) => console.log(context.getHeader('publish'), context.getBody());
 */
export class Lhttp {
  /**
   * @param {string} url
   * @param {object} [options] LhttpClient options; reconnect is off by default here
   */
  constructor(url, options = {}) {
    this.on_open = null;
    this.on_message = null;
    this.on_close = null;
    this.on_error = null;
    /** The LhttpClient underneath. */
    this.client = new LhttpClient(url, { reconnect: false, ...options });
    const call = (name, ...args) => typeof this[name] === 'function' && this[name](...args);
    this.client.on('open', () => call('on_open', new LhttpContext(this.client)));
    this.client.on('message', (event) => call('on_message', new LhttpContext(this.client, event.message)));
    this.client.on('close', (event) => call('on_close', new LhttpContext(this.client), event));
    this.client.on('error', (event) => call('on_error', new LhttpContext(this.client), event));
  }

  /** Same as the context's publish(). */
  publish(channel, command, headers, body) {
    new LhttpContext(this.client).publish(channel, command, headers, body);
  }

  /** Same as the context's subscribe(). */
  subscribe(channel, command, headers, body) {
    new LhttpContext(this.client).subscribe(channel, command, headers, body);
  }

  /** Same as the context's unsubscribe(). */
  unsubscribe(channel, command, headers, body) {
    new LhttpContext(this.client).unsubscribe(channel, command, headers, body);
  }

  /** Closes the connection. */
  close() {
    return this.client.close();
  }
}
/** The close code of a client the server's operator disconnected (lhttpd's `POST /server/disconnect`). */
const CLOSE_DISCONNECTED = 4001;

