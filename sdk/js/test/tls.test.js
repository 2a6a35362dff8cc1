// wss:// against a real lhttpd that terminates TLS itself, with a self-signed certificate made
// by the openssl command: a client given the certificate as its CA (the `tls` option) chats; a
// client that does not trust it is told so at once, instead of retrying for ever.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { connect, LhttpClient, LhttpError } from '../lhttp.js';
import { httpsFetch, nextEvent, selfSignedCertificate, startLhttpd, waitFor } from './lhttpd.js';

/** A handler that keeps what it receives, and a way to wait for the n-th message. */
function inbox() {
  const messages = [];
  const handler = (message) => messages.push(message);
  const waitCount = (n, what = `${n} messages`) => waitFor(() => messages.length >= n, { timeout: 5000, what });
  return { messages, handler, waitCount };
}

/** `promise`, or a failure naming `what` after `ms`: a connect() that hangs fails the test. */
function settlesWithin(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not settle within ${ms} ms`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

/** Asserts that `error` is the SDK's report of a certificate it refused, with Node's `code`. */
function assertCertificateRejected(error, code) {
  assert.ok(error instanceof LhttpError, `expected an LhttpError, got ${error}`);
  assert.equal(error.status, 0);
  assert.equal(error.reason, 'certificate rejected');
  assert.equal(error.cause?.code, code);
  assert.ok(error.message.includes(code), `the message names the TLS error: ${error.message}`);
  return true;
}

describe('wss:// against lhttpd with TLS', () => {
  let certificate;
  let server;
  const clients = [];
  const open = async (url, options) => {
    const client = await connect(url, options);
    clients.push(client);
    return client;
  };

  before(async () => {
    certificate = await selfSignedCertificate();
    server = await startLhttpd({ tls: certificate });
  });
  after(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await server?.stop();
    certificate?.remove();
  });

  test('clients that trust the certificate subscribe, publish and receive', async () => {
    assert.match(server.url, /^wss:\/\/localhost:\d+\/$/);
    const { ca } = certificate;
    const alice = await open(server.url, { tls: { ca } });
    // The certificate names the address too.
    const bob = await open(`wss://127.0.0.1:${server.port}/`, { tls: { ca } });
    const box = inbox();
    await alice.subscribe('secure', box.handler);

    const answer = await bob.publish('secure', 'over TLS', { headers: { nick: 'bob' }, ack: true });
    assert.equal(answer.header('status'), '200');
    await box.waitCount(1);
    assert.equal(box.messages[0].channel, 'secure');
    assert.equal(box.messages[0].header('nick'), 'bob');
    assert.equal(box.messages[0].body, 'over TLS');

    // The same port publishes over https://.
    const response = await httpsFetch(`${server.http}/publish`, {
      ca,
      method: 'POST',
      body: 'LHTTP/1.0 chat\r\npublish:secure\r\n\r\nfrom https',
    });
    assert.equal(response.status, 200);
    await box.waitCount(2);
    assert.equal(box.messages[1].body, 'from https');
  });

  test('a client without the CA: connect() rejects with "certificate rejected" and does not retry', async () => {
    const client = new LhttpClient(server.url, { reconnectDelay: 50 });
    const events = [];
    for (const type of ['open', 'close', 'reconnecting', 'error']) client.on(type, (event) => events.push(event));
    // Asked before the connection: they must settle too.
    const subscribed = client.subscribe('secure', () => {});
    const requested = client.request({ command: 'x' });

    await assert.rejects(settlesWithin(client.opened, 5000, 'connect()'), (error) =>
      assertCertificateRejected(error, 'DEPTH_ZERO_SELF_SIGNED_CERT'),
    );
    await assert.rejects(settlesWithin(subscribed, 1000, 'subscribe()'), (error) => error.reason === 'certificate rejected');
    await assert.rejects(settlesWithin(requested, 1000, 'request()'), (error) => error.reason === 'certificate rejected');
    assert.equal(client.state, 'closed');
    assert.throws(() => client.send({ command: 'x' }), (error) => error.reason === 'certificate rejected');

    // Retrying cannot help: no further attempt is made.
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(events.map((event) => event.type), ['error', 'close']);
    assert.equal(events[0].source, 'transport');
    assertCertificateRejected(events[0].error, 'DEPTH_ZERO_SELF_SIGNED_CERT');
    assert.equal(events[1].willReconnect, false);
    await client.close();
  });

  test('a certificate for another name is rejected as well', async () => {
    // Trusted, but not issued to the name the client asks for.
    const options = { tls: { ca: certificate.ca, servername: 'elsewhere.example' } };
    await assert.rejects(settlesWithin(connect(server.url, options), 5000, 'connect()'), (error) =>
      assertCertificateRejected(error, 'ERR_TLS_CERT_ALTNAME_INVALID'),
    );
  });

  test('with the tls option the ws package is used even where a global WebSocket exists', async () => {
    // As in Node 22+: the platform's WebSocket takes no TLS options, so it must not be chosen.
    const platform = Object.getOwnPropertyDescriptor(globalThis, 'WebSocket');
    globalThis.WebSocket = class {
      constructor() {
        throw new Error('the global WebSocket was used');
      }
    };
    try {
      const client = await open(server.url, { tls: { ca: certificate.ca } });
      assert.equal(client.state, 'open');
    } finally {
      if (platform) Object.defineProperty(globalThis, 'WebSocket', platform);
      else delete globalThis.WebSocket;
    }
  });

  test('the tls option must be an object', () => {
    assert.throws(() => new LhttpClient(server.url, { tls: 'ca.pem' }), TypeError);
  });
});

test('a certificate rejected at a reconnection is reported, and the client keeps trying', async (t) => {
  // A renewal that went wrong on the server may be mended by the next reload: the client, which
  // has connected before, reports each failure and reconnects once the certificate is right.
  const certificate = await selfSignedCertificate();
  const stranger = await selfSignedCertificate();
  t.after(() => [certificate, stranger].forEach((c) => c.remove()));
  let server = await startLhttpd({ tls: certificate });
  const { port } = server;
  t.after(() => server.stop());
  const client = await connect(server.url, { tls: { ca: certificate.ca }, reconnectDelay: 50, maxReconnectDelay: 200 });
  t.after(() => client.close());
  const box = inbox();
  await client.subscribe('renewal', box.handler);

  await server.stop();
  const refused = new Promise((resolveRefused) => {
    const listener = (event) => {
      if (event.error?.code !== 'DEPTH_ZERO_SELF_SIGNED_CERT') return;
      client.off('error', listener);
      resolveRefused(event);
    };
    client.on('error', listener);
  });
  server = await startLhttpd({ port, tls: stranger });
  const event = await settlesWithin(refused, 10000, 'an error event for the stranger certificate');
  assert.equal(event.source, 'transport');
  const retry = await nextEvent(client, 'reconnecting');
  assert.ok(retry.attempt >= 1);

  await server.stop();
  const reconnected = nextEvent(client, 'reconnect', 15000);
  server = await startLhttpd({ port, tls: certificate });
  await reconnected;
  const publisher = await connect(server.url, { tls: { ca: certificate.ca } });
  t.after(() => publisher.close());
  publisher.publish('renewal', 'back');
  await box.waitCount(1);
  assert.equal(box.messages[0].body, 'back');
});
