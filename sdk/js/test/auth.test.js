// The `token` option and authenticate() against a real lhttpd that refuses anonymous clients:
// the token is sent in an `auth` message first on every connection (browsers cannot set an
// Authorization header), so subscriptions are restored after a restart; refusals are reported.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, describe, test } from 'node:test';

import { connect, LhttpClient, LhttpError } from '../lhttp.js';
import { nextEvent, startLhttpd, waitFor } from './lhttpd.js';

const SECRET = 'test-only hs256 secret, 32+ bytes long!';
const ENV = {
  LHTTPD_AUTH__ANONYMOUS: 'false',
  LHTTPD_AUTH__HS256_SECRET: SECRET,
  LHTTPD_AUTH__LEEWAY_SECS: '0',
};

/** An HS256 JWT for `sub`, valid for `ttl` seconds (negative: already expired). */
function token(sub, ttl = 300) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const head = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + ttl })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

describe('token authentication against lhttpd', () => {
  let server;
  const clients = [];
  const open = async (options) => {
    const client = await connect(server.url, options);
    clients.push(client);
    return client;
  };

  before(async () => {
    server = await startLhttpd({ env: ENV });
  });
  after(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await server?.stop();
  });

  test('without a token the server answers 401 to everything but auth', async () => {
    const anonymous = await open({ reconnect: false });
    await assert.rejects(anonymous.subscribe('room', () => {}), (error) => {
      assert.ok(error instanceof LhttpError);
      assert.equal(error.status, 401);
      assert.match(error.reason, /authentication required/);
      return true;
    });
    const answer = await anonymous.authenticate(token('late'));
    assert.equal(answer.command, 'ok');
    await anonymous.subscribe('room', () => {});
  });

  test('a client the server disconnects (close 4001) does not reconnect', async () => {
    const dora = await open({ token: token('dora'), reconnectDelay: 50 });
    await dora.subscribe('room', () => {});
    const closed = nextEvent(dora, 'close');
    const answer = await fetch(`${server.http}/server/disconnect`, {
      method: 'POST',
      body: JSON.stringify({ user: 'dora' }),
    });
    assert.deepEqual(await answer.json(), { disconnected: 1, cluster: false });
    const event = await closed;
    assert.equal(event.code, 4001);
    assert.equal(event.willReconnect, false);
    // Long past the reconnect delay: still away.
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(dora.state, 'closed');
  });

  test('with the token option a client subscribes and receives', async () => {
    const alice = await open({ token: token('alice') });
    const bob = await open({ token: () => token('bob') });
    const received = [];
    await alice.subscribe('room', (message) => received.push(message.body));
    await bob.publish('room', 'hi alice', { ack: true });
    await waitFor(() => received.length === 1, { what: 'the message' });
    assert.deepEqual(received, ['hi alice']);
  });

  test('connect() rejects with the 401 when the token is refused, and gives up', async () => {
    await assert.rejects(connect(server.url, { token: token('old', -60) }), (error) => {
      assert.ok(error instanceof LhttpError);
      assert.equal(error.status, 401);
      assert.equal(error.reason, 'token expired');
      return true;
    });
    // A good token resolves only once the server has accepted it.
    const client = await open({ token: token('fresh') });
    await client.subscribe('room', () => {});
  });

  test('a refused token is reported as an auth error with the reason', async () => {
    const client = new LhttpClient(server.url, { token: token('old', -60), reconnect: false });
    clients.push(client);
    const event = await nextEvent(client, 'error');
    assert.equal(event.source, 'auth');
    assert.equal(event.error.status, 401);
    assert.equal(event.error.reason, 'token expired');
  });

  test('a token function is called again on reconnection and subscriptions come back', async () => {
    let calls = 0;
    const client = await open({ token: () => token(`carol`, 300 + calls++), reconnectDelay: 50 });
    const received = [];
    await client.subscribe('news', (message) => received.push(message.body));
    const port = server.port;
    // Listening before the restart: the client may be back before startLhttpd returns.
    const reconnected = nextEvent(client, 'reconnect', 15000);
    await server.stop();
    server = await startLhttpd({ port, env: ENV });
    await reconnected;
    assert.ok(calls >= 2, `token function called ${calls} times`);
    const publisher = await open({ token: token('dave') });
    await publisher.publish('news', 'after restart', { ack: true });
    await waitFor(() => received.length === 1, { what: 'the message after the restart' });
    assert.deepEqual(received, ['after restart']);
  });
});

describe('a token refresh that narrows the rights', () => {
  let server;
  const clients = [];
  before(async () => {
    server = await startLhttpd({
      env: ENV,
      config: [
        '[[auth.rules]]',
        'channels = "admin.>"',
        'subscribe = true',
        'publish = true',
        'roles = ["admin"]',
        '',
      ].join('\n'),
    });
  });
  after(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await server?.stop();
  });

  /** An HS256 JWT for `sub` with `roles`. */
  function tokenWithRoles(sub, roles) {
    const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const claims = { sub, roles, exp: Math.floor(Date.now() / 1000) + 300 };
    const head = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
    return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
  }

  test('ends what the new token does not allow, with an unsubscribed event each', async () => {
    const client = await connect(server.url, { token: tokenWithRoles('ops', ['admin']) });
    clients.push(client);
    await client.subscribe('admin.news', () => {});
    const work = [];
    await client.serve('admin.jobs', 'workers', (delivery) => {
      work.push(delivery.body);
      return 'done';
    });
    const ended = [];
    client.on('unsubscribed', (event) => ended.push([event.channel, event.queue ?? null]));
    await client.authenticate(tokenWithRoles('ops', []));
    await waitFor(() => ended.length === 2, { what: 'two unsubscribed events' });
    assert.deepEqual(ended.sort(), [['admin.jobs', 'workers'], ['admin.news', null]]);
    assert.deepEqual(client.channels, []);

    const boss = await connect(server.url, { token: tokenWithRoles('boss', ['admin']) });
    clients.push(boss);
    await boss.publish('admin.jobs', 'secret work', { ack: true });
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.deepEqual(work, []);
  });
});
