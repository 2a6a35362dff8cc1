// The compatibility layer: code written for the original SDK's names keeps working, without its
// bugs (getHeader ignoring its argument, headers piling up across sends).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { WebSocket } from 'ws';

import { Lhttp } from '../lhttp.js';
import { startLhttpd, waitFor } from './lhttpd.js';

let server;
const opened = [];
before(async () => {
  server = await startLhttpd();
});
after(async () => {
  await Promise.all(opened.map((lhttp) => lhttp.close()));
  await server?.stop();
});

/** A new Lhttp whose received contexts are kept; resolves once on_open ran. */
async function lhttpClient(options) {
  const received = [];
  const lhttp = new Lhttp(server.url, options);
  opened.push(lhttp);
  lhttp.on_message = (context) => received.push(context);
  const context = await new Promise((resolve, reject) => {
    lhttp.on_open = resolve;
    lhttp.on_close = () => reject(new Error('closed before open'));
  });
  lhttp.on_close = null;
  return { lhttp, context, received };
}

test('two original-style clients chat through the chatroom', async () => {
  const bob = await lhttpClient();
  const alice = await lhttpClient();

  // As the original demo did, plus a request-id to know when the subscription is active.
  bob.context.subscribe('chatroom', 'chat', { 'request-id': 'sub-1' }, '');
  await waitFor(() => bob.received.some((c) => c.getHeader('request-id') === 'sub-1'), { what: 'subscription' });
  const answer = bob.received.shift();
  assert.equal(answer.getCommand(), 'ok');
  assert.equal(answer.getHeader('status'), '200');

  alice.context.publish('chatroom', 'chat', { nick: 'alice' }, 'hello bob');
  alice.lhttp.publish('chatroom', 'chat', null, 'second\r\n\r\nparagraph');
  await waitFor(() => bob.received.length >= 2, { what: 'two chat messages' });

  const [first, second] = bob.received;
  assert.equal(first.getCommand(), 'chat');
  assert.equal(first.getBody(), 'hello bob');
  assert.equal(first.getHeader('publish'), 'chatroom');
  assert.equal(first.getHeader('nick'), 'alice');
  assert.equal(first.getHeader('NICK'), 'alice');
  assert.equal(first.getHeader('missing'), null);
  assert.deepEqual(first.getHeaders(), { publish: 'chatroom', nick: 'alice' });
  // The second message did not inherit the first one's headers.
  assert.equal(second.getBody(), 'second\r\n\r\nparagraph');
  assert.equal(second.getHeader('nick'), null);
});

test('context.send: headers added for one send do not pile up on the next', async () => {
  const frames = [];
  const spy = new WebSocket(server.url);
  await new Promise((resolve, reject) => {
    spy.once('open', resolve);
    spy.once('error', reject);
  });
  spy.on('message', (data) => frames.push(String(data)));
  spy.send('LHTTP/1.0 chat\r\nsubscribe:pile\r\nrequest-id:s\r\n\r\n');
  await waitFor(() => frames.length === 1, { what: 'subscription answer' });

  try {
    const { context } = await lhttpClient();
    context.setCommand('chat').addHeader('publish', 'pile').addHeader('n', '1');
    context.send('first');
    context.addHeader('publish', 'pile');
    context.send('second');
    await waitFor(() => frames.length === 3, { what: 'two published messages' });
    assert.deepEqual(frames.slice(1), [
      'LHTTP/1.0 chat\r\npublish:pile\r\nn:1\r\n\r\nfirst',
      'LHTTP/1.0 chat\r\npublish:pile\r\n\r\nsecond',
    ]);
  } finally {
    spy.close();
  }
});

test('with reconnect on, on_open runs again after lhttpd restarts, and its subscription works', async (t) => {
  let own = await startLhttpd();
  t.after(() => own.stop());
  const opens = [];
  const received = [];
  const lhttp = new Lhttp(own.url, { reconnect: true, reconnectDelay: 50, maxReconnectDelay: 400 });
  t.after(() => lhttp.close());
  // Original-style code: subscribe in on_open (here with a request-id, to see it confirmed).
  lhttp.on_open = (context) => {
    opens.push(context.getCommand());
    context.subscribe('lobby', 'chat', { 'request-id': `open-${opens.length}` }, '');
  };
  lhttp.on_message = (context) => received.push(context);
  await waitFor(() => received.some((c) => c.getHeader('request-id') === 'open-1'), { what: 'first subscription' });

  await own.stop();
  own = await startLhttpd({ port: own.port });
  await waitFor(() => received.some((c) => c.getHeader('request-id') === 'open-2'), {
    timeout: 15000,
    what: 'subscription after the restart',
  });
  assert.deepEqual(opens, ['', '']);

  const sender = new Lhttp(own.url);
  t.after(() => sender.close());
  sender.on_open = (context) => context.publish('lobby', 'chat', null, 'after restart');
  await waitFor(() => received.some((c) => c.getBody() === 'after restart'), { what: 'message after the restart' });
});
