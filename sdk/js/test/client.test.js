// The client against a real lhttpd: pub/sub between two clients, requests, unsubscribe,
// reconnection across a server restart, multipart through the server, HTTP publish.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';

import { buildMultipart, connect, LhttpClient, LhttpError, Message, parseMultipart } from '../lhttp.js';
import { freePort, nextEvent, startLhttpd, waitFor } from './lhttpd.js';
import { startRelay } from './relay.js';

/** A WebSocket class that records every frame it receives, to check exact bytes. */
function recordingWebSocket(frames) {
  return class extends WebSocket {
    constructor(url) {
      super(url);
      this.addEventListener('message', (event) => frames.push(event.data));
    }
  };
}

/** A handler that keeps what it receives, and a way to wait for the n-th message. */
function inbox() {
  const messages = [];
  const handler = (message) => messages.push(message);
  const waitCount = (n, what = `${n} messages`) => waitFor(() => messages.length >= n, { timeout: 5000, what });
  return { messages, handler, waitCount };
}

describe('client against lhttpd', () => {
  let server;
  const clients = [];
  const open = async (options) => {
    const client = await connect(server.url, options);
    clients.push(client);
    return client;
  };

  before(async () => {
    server = await startLhttpd();
  });
  after(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await server?.stop();
  });

  test('a subscriber receives exactly the bytes another client published', async () => {
    const frames = [];
    const alice = await open({ WebSocket: recordingWebSocket(frames) });
    const bob = await open();
    const box = inbox();
    await alice.subscribe('room', box.handler);

    bob.publish('room', 'hello\r\n\r\nworld: two lines', { headers: [['nick', 'bob'], ['x', 'a:b c']] });
    await box.waitCount(1);

    const expected = 'LHTTP/1.0 chat\r\npublish:room\r\nnick:bob\r\nx:a:b c\r\n\r\nhello\r\n\r\nworld: two lines';
    // The other frame is the answer to the subscription: "LHTTP/1.0 ok", status:200, request-id.
    assert.deepEqual(frames.filter((frame) => frame.includes('publish:')), [expected]);
    assert.match(frames[0], /^LHTTP\/1\.0 ok\r\nstatus:200\r\nrequest-id:[^\r]+\r\n\r\n$/);
    const [message] = box.messages;
    assert.equal(message.command, 'chat');
    assert.equal(message.channel, 'room');
    assert.equal(message.header('nick'), 'bob');
    assert.equal(message.header('x'), 'a:b c');
    assert.equal(message.body, 'hello\r\n\r\nworld: two lines');
  });

  test('requests: ok answers resolve, error answers reject with status and reason', async () => {
    const client = await open();
    const answer = await client.publish('nobody-listens', 'x', { ack: true });
    assert.equal(answer.command, 'ok');
    assert.equal(answer.header('status'), '200');

    const refused = await client.subscribe('>', () => {}).then(
      () => assert.fail('subscribing to > must be refused'),
      (error) => error,
    );
    assert.ok(refused instanceof LhttpError);
    assert.equal(refused.status, 400);
    assert.ok(refused.reason.length > 0);
    assert.deepEqual(client.channels, [], 'a refused subscription is dropped');

    await assert.rejects(client.request(new Message('no-such-command')), (error) => error.status === 404);
    // The connection survives errors.
    assert.equal((await client.request({ command: 'x', headers: { subscribe: 'fine' } })).command, 'ok');
  });

  test('a wildcard subscription receives the channels it matches, with the concrete channel', async () => {
    const alice = await open();
    const bob = await open();
    const temps = inbox();
    const marker = inbox();
    await alice.subscribe('sensor.*.temp', temps.handler);
    await alice.subscribe('marker', marker.handler);
    bob.publish('sensor.1.temp', '21');
    bob.publish('sensor.1.hum', '40');
    bob.publish('sensor.2.temp.raw', 'x');
    bob.publish('sensor.2.temp', '19');
    bob.publish('marker', 'done');
    await marker.waitCount(1);
    assert.deepEqual(
      temps.messages.map((m) => `${m.channel}=${m.body}`),
      ['sensor.1.temp=21', 'sensor.2.temp=19'],
    );
  });

  test('unsubscribe stops delivery', async () => {
    const alice = await open();
    const bob = await open();
    const news = inbox();
    const marker = inbox();
    await alice.subscribe('news', news.handler);
    await alice.subscribe('marker', marker.handler);

    bob.publish('news', 'one');
    await news.waitCount(1);
    await alice.unsubscribe('news');
    bob.publish('news', 'two');
    // Messages of one publisher arrive in order: once the marker is here, "two" would be too.
    bob.publish('marker', 'after two');
    await marker.waitCount(1);
    assert.deepEqual(news.messages.map((m) => m.body), ['one']);
    assert.deepEqual(alice.channels, ['marker']);
  });

  test('two handlers on one channel; removing one keeps the other', async () => {
    const alice = await open();
    const first = inbox();
    const second = inbox();
    await alice.subscribe('pair', first.handler);
    await alice.subscribe('pair', second.handler);
    alice.publish('pair', 'both');
    await first.waitCount(1);
    await second.waitCount(1);
    await alice.unsubscribe('pair', first.handler);
    await alice.publish('pair', 'second only', { ack: true });
    await second.waitCount(2);
    assert.deepEqual(first.messages.map((m) => m.body), ['both']);
  });

  test('a multipart body survives the round trip through the server', async () => {
    const alice = await open();
    const bob = await open();
    const box = inbox();
    await alice.subscribe('files', box.handler);

    const { multipart, body } = buildMultipart([
      { headers: { name: 'résumé.txt', type: 'text/plain' }, body: 'line 1\r\n\r\nline 3 ✓' },
      { headers: [['name', 'empty']], body: '' },
      { headers: [], body: 'no headers' },
    ]);
    await bob.publish('files', body, { command: 'upload', headers: { multipart }, ack: true });
    await box.waitCount(1);

    const parts = parseMultipart(box.messages[0]);
    assert.deepEqual(
      parts.map((part) => [part.headers, part.body]),
      [
        [[['name', 'résumé.txt'], ['type', 'text/plain']], 'line 1\r\n\r\nline 3 ✓'],
        [[['name', 'empty']], ''],
        [[], 'no headers'],
      ],
    );
    // The server checks the offsets too.
    await assert.rejects(
      bob.request({ command: 'upload', headers: { publish: 'files', multipart: '0 999' }, body: 'k:v\r\n\r\n' }),
      (error) => error.status === 400,
    );
  });

  test('a message published over HTTP reaches an SDK subscriber', async () => {
    const alice = await open();
    const box = inbox();
    await alice.subscribe('mike', box.handler);
    const response = await fetch(`${server.http}/publish`, {
      method: 'POST',
      body: 'LHTTP/1.0 chat\r\npublish:mike\r\n\r\nhello mike',
    });
    assert.equal(response.status, 200);
    await box.waitCount(1);
    assert.equal(box.messages[0].body, 'hello mike');
  });

  test('a body that is not UTF-8 travels as a binary frame and arrives as the same bytes', async () => {
    const alice = await open({ binary: 'bytes' });
    const bob = await open();
    const box = inbox();
    await alice.subscribe('blobs', box.handler);
    const bytes = new Uint8Array([0xff, 0x00, 0x0d, 0x0a, 0x0d, 0x0a, 0xfe]);
    await bob.publish('blobs', bytes, { command: 'blob', headers: { type: 'application/octet-stream' }, ack: true });
    await box.waitCount(1);
    const [message] = box.messages;
    assert.equal(message.command, 'blob');
    assert.equal(message.header('type'), 'application/octet-stream');
    assert.deepEqual(message.body, bytes);
  });

  test('send() while connecting is queued until the connection opens', async () => {
    const alice = await open();
    const box = inbox();
    await alice.subscribe('early', box.handler);
    const early = new LhttpClient(server.url);
    clients.push(early);
    assert.equal(early.state, 'connecting');
    early.publish('early', 'sent before open');
    await box.waitCount(1);
    assert.equal(box.messages[0].body, 'sent before open');
  });
});

describe('reconnection', () => {
  let server;
  let client;
  let publisher;
  after(async () => {
    await client?.close();
    await publisher?.close();
    await server?.stop();
  });

  test('after lhttpd restarts on the same port, the client reconnects and resubscribes', async () => {
    server = await startLhttpd();
    const { port } = server;
    client = await connect(server.url, { reconnectDelay: 50, maxReconnectDelay: 400 });
    const events = [];
    for (const type of ['open', 'close', 'reconnecting', 'reconnect']) client.on(type, (e) => events.push(type));
    const box = inbox();
    await client.subscribe('alerts', box.handler);

    const closed = nextEvent(client, 'close');
    await server.stop();
    const closeEvent = await closed;
    assert.equal(closeEvent.willReconnect, true);
    assert.equal(client.state === 'closed' || client.state === 'connecting', true);

    const reconnected = nextEvent(client, 'reconnect', 15000);
    server = await startLhttpd({ port });
    await reconnected;
    assert.equal(client.state, 'open');
    assert.ok(events.includes('reconnecting'), `events: ${events}`);
    assert.deepEqual(events.slice(-2), ['open', 'reconnect']);

    // The subscription was restored before `reconnect`: a message published now arrives.
    publisher = await connect(server.url);
    publisher.publish('alerts', 'after the restart');
    await box.waitCount(1);
    assert.equal(box.messages[0].body, 'after the restart');
  });
});

test('a request that gets no answer times out with status 0', async () => {
  // A socket that opens and never answers: the timeout alone must settle the request.
  class SilentSocket {
    readyState = 1;
    constructor() {
      setTimeout(() => this.onopen?.(), 0);
    }
    send() {}
    close(code = 1000) {
      this.readyState = 3;
      setTimeout(() => this.onclose?.({ code, reason: '' }), 0);
    }
  }
  const client = await connect('ws://silent.invalid/', { WebSocket: SilentSocket });
  try {
    const started = Date.now();
    await assert.rejects(client.request({ command: 'x' }, { timeout: 100 }), (error) => {
      assert.ok(error instanceof LhttpError);
      assert.equal(error.status, 0);
      assert.equal(error.reason, 'timeout');
      return true;
    });
    assert.ok(Date.now() - started >= 90);
  } finally {
    await client.close();
  }
});

describe('connect() settles', () => {
  test('with "connect timeout" when nothing answers, and the client stops trying', async () => {
    const port = await freePort(); // nobody listens here
    const started = Date.now();
    await assert.rejects(connect(`ws://127.0.0.1:${port}/`, { connectTimeout: 300, reconnectDelay: 20 }), (error) => {
      assert.ok(error instanceof LhttpError);
      assert.equal(error.status, 0);
      assert.equal(error.reason, 'connect timeout');
      return true;
    });
    const elapsed = Date.now() - started;
    assert.ok(elapsed >= 280 && elapsed < 3000, `${elapsed} ms`);
  });
});

describe('a request queued while disconnected', () => {
  let server;
  let relay;
  const clients = [];
  after(async () => {
    for (const c of clients) await c.close();
    await relay?.close();
    await server?.stop();
  });

  test('survives failed reconnection attempts and reaches subscribers exactly once', async () => {
    server = await startLhttpd();
    relay = await startRelay(server.port);
    const subscriber = await connect(server.url);
    clients.push(subscriber);
    const box = inbox();
    await subscriber.subscribe('once', box.handler);
    const client = await connect(relay.url, { reconnectDelay: 20, maxReconnectDelay: 40 });
    clients.push(client);
    relay.refuse(true);
    const closed = nextEvent(client, 'close');
    relay.cut();
    await closed;
    // Sent while disconnected; then at least two attempts fail before the path comes back.
    const acked = client.publish('once', 'posted once', { ack: true });
    let rejected = null;
    acked.catch((error) => {
      rejected = error;
    });
    await waitFor(() => relay.accepted() >= 3, { what: 'failed reconnection attempts' });
    assert.equal(rejected, null, 'a request never sent is not rejected by a failed attempt');
    relay.refuse(false);
    const answer = await acked;
    assert.equal(answer.command, 'ok');
    await box.waitCount(1);
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(box.messages.length, 1);
    assert.equal(box.messages[0].body, 'posted once');
  });

  test('that timed out is never sent later', async () => {
    const box = inbox();
    const subscriber = await connect(server.url);
    clients.push(subscriber);
    await subscriber.subscribe('never', box.handler);
    const client = await connect(relay.url, { reconnectDelay: 20, maxReconnectDelay: 40, requestTimeout: 200 });
    clients.push(client);
    relay.refuse(true);
    const closed = nextEvent(client, 'close');
    relay.cut();
    await closed;
    await assert.rejects(client.publish('never', 'too late', { ack: true }), (error) => {
      assert.equal(error.reason, 'timeout');
      return true;
    });
    relay.refuse(false);
    await nextEvent(client, 'reconnect', 10000).catch(() => {});
    await waitFor(() => client.state === 'open', { what: 'reconnected' });
    client.publish('never', 'after');
    await box.waitCount(1);
    await new Promise((r) => setTimeout(r, 200));
    assert.deepEqual(box.messages.map((m) => m.body), ['after']);
  });
});

test('a restarting server\'s retry hint (close 1012) is the wait before reconnecting', async () => {
  // lhttpd at shutdown closes with 1012 "server restarting; retry in N ms" (N >= 250).
  let server = await startLhttpd();
  const { port } = server;
  const client = await connect(server.url, { reconnectDelay: 10, maxReconnectDelay: 10000 });
  try {
    const closed = nextEvent(client, 'close');
    const reconnecting = nextEvent(client, 'reconnecting');
    await server.terminate();
    const close = await closed;
    assert.equal(close.code, 1012, close.reason);
    const hint = Number(/retry in (\d+) ms/.exec(close.reason)?.[1]);
    assert.ok(hint >= 250 && hint <= 3750, close.reason);
    assert.equal((await reconnecting).delay, hint, 'the hint, not the 10 ms backoff');
    server = await startLhttpd({ port });
    await nextEvent(client, 'reconnect', 15000);
  } finally {
    await client.close();
    await server.stop();
  }
});
