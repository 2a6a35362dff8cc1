// Channel history through the SDK against a real lhttpd that keeps history: a subscriber whose
// connection is cut gets what it missed, once and in order; a gap is reported when the server
// no longer has it; `recent` and history() read what is kept; a silent network path is found
// by ping and replaced. The network is broken through a TCP relay the test controls.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';

import { connect } from '../lhttp.js';
import { nextEvent, startLhttpd, waitFor } from './lhttpd.js';
import { startRelay } from './relay.js';

const CONFIG = `
[[channels]]
pattern = "feed.*"
history_size = 1000

[[channels]]
pattern = "short.*"
history_size = 5

[history]
store = "memory"
`;

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** A WebSocket class that records every frame it receives. */
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
  const waitCount = (n, timeout = 10000) => waitFor(() => messages.length >= n, { timeout, what: `${n} messages` });
  const bodies = () => messages.map((m) => m.text);
  const offsets = () => messages.map((m) => Number(m.header('offset')));
  return { messages, handler, waitCount, bodies, offsets };
}

const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

describe('history and recovery', () => {
  let server;
  const closers = [];
  const open = async (url, options) => {
    const client = await connect(url, options);
    closers.push(() => client.close());
    return client;
  };
  const relayTo = async () => {
    const relay = await startRelay(server.port);
    closers.push(() => relay.close());
    return relay;
  };

  before(async () => {
    server = await startLhttpd({ config: CONFIG });
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await server?.stop();
  });

  test('a subscriber cut off twice during a steady stream receives every message once, in order', async () => {
    const relay = await relayTo();
    const frames = [];
    const subscriber = await open(relay.url, {
      reconnectDelay: 20,
      maxReconnectDelay: 100,
      WebSocket: recordingWebSocket(frames),
    });
    const publisher = await open(server.url);
    const gaps = [];
    subscriber.on('gap', (event) => gaps.push(event));
    let reconnects = 0;
    subscriber.on('reconnect', () => (reconnects += 1));
    const box = inbox();
    await subscriber.subscribe('feed.steady', box.handler);

    const total = 300;
    for (let i = 1; i <= total; i += 1) {
      await publisher.publish('feed.steady', `m${i}`, { ack: true });
      if (i === 100 || i === 200) relay.cut();
      await sleep(2);
    }
    await box.waitCount(total, 15000);
    // A last message: a duplicate of an earlier one would have come before it.
    await publisher.publish('feed.steady', 'end', { ack: true });
    await box.waitCount(total + 1);

    assert.equal(reconnects, 2);
    assert.equal(relay.accepted(), 3);
    assert.deepEqual(box.bodies(), [...range(1, total).map((i) => `m${i}`), 'end']);
    assert.deepEqual(box.offsets(), range(1, total + 1));
    assert.deepEqual(gaps, []);
    // What was published while it was away came after the `subscribed` answers, recovered.
    const answers = frames.filter((frame) => frame.startsWith('LHTTP/1.0 subscribed\r\n'));
    assert.equal(answers.length, 2);
    for (const answer of answers) assert.match(answer, /\r\nrecovered:true\r\n/);
    const caughtUp = answers.map((answer) => Number(/\r\ncount:(\d+)\r\n/.exec(answer)[1]));
    assert.ok(caughtUp.every((count) => count > 0), `messages recovered per reconnection: ${caughtUp}`);
  });

  test('a gap is reported when the history no longer holds what was missed', async () => {
    const relay = await relayTo();
    const subscriber = await open(relay.url, { reconnectDelay: 20, maxReconnectDelay: 100 });
    const publisher = await open(server.url);
    const box = inbox();
    await subscriber.subscribe('short.trimmed', box.handler);
    for (let i = 1; i <= 3; i += 1) await publisher.publish('short.trimmed', `m${i}`, { ack: true });
    await box.waitCount(3);
    const epoch = box.messages[0].header('epoch');

    // Away while ten messages are published: the channel keeps only the last five.
    relay.refuse(true);
    const closed = nextEvent(subscriber, 'close');
    relay.cut();
    await closed;
    for (let i = 4; i <= 13; i += 1) await publisher.publish('short.trimmed', `m${i}`, { ack: true });
    const gap = nextEvent(subscriber, 'gap');
    const reconnected = nextEvent(subscriber, 'reconnect');
    relay.refuse(false);
    const event = await gap;
    await reconnected;
    assert.equal(event.channel, 'short.trimmed');
    assert.equal(event.lastEpoch, epoch);
    assert.equal(event.lastOffset, 3);
    assert.equal(event.epoch, epoch, 'the same epoch: trimmed, not lost with a restart');
    assert.equal(event.offset, 13);

    // Nothing of the partial history was delivered; live messages go on.
    await publisher.publish('short.trimmed', 'after', { ack: true });
    await box.waitCount(4);
    assert.deepEqual(box.bodies(), ['m1', 'm2', 'm3', 'after']);
    assert.equal(box.messages[3].header('offset'), '14');
    // What an application does on a gap: reload what is kept.
    const kept = await subscriber.history('short.trimmed', { recent: 5 });
    assert.deepEqual(kept.map((m) => m.text), ['m10', 'm11', 'm12', 'm13', 'after']);
  });

  test('recent shows the last messages kept, then live ones', async () => {
    const publisher = await open(server.url);
    for (let i = 1; i <= 8; i += 1) await publisher.publish('feed.recent', `m${i}`, { ack: true });
    const reader = await open(server.url);
    const box = inbox();
    const answer = await reader.subscribe('feed.recent', box.handler, { recent: 3 });
    assert.equal(answer.command, 'subscribed');
    assert.equal(answer.header('count'), '3');
    assert.equal(answer.header('offset'), '8');
    await box.waitCount(3);
    await publisher.publish('feed.recent', 'm9', { ack: true });
    await box.waitCount(4);
    assert.deepEqual(box.bodies(), ['m6', 'm7', 'm8', 'm9']);
    assert.deepEqual(box.offsets(), [6, 7, 8, 9]);

    // A channel that keeps no history: nothing first, live messages as usual.
    const plain = inbox();
    const none = await reader.subscribe('no-history', plain.handler, { recent: 50 });
    assert.equal(none.command, 'subscribed');
    assert.equal(none.header('count'), '0');
    assert.equal(none.header('epoch'), undefined);
    await publisher.publish('no-history', 'live', { ack: true });
    await plain.waitCount(1);
    assert.deepEqual(plain.bodies(), ['live']);
  });

  test('history() reads what is kept without subscribing', async () => {
    const publisher = await open(server.url);
    const reader = await open(server.url);
    const live = inbox();
    await reader.subscribe('feed.read', live.handler);
    for (let i = 1; i <= 6; i += 1) await publisher.publish('feed.read', `m${i}`, { ack: true });
    for (let i = 1; i <= 2; i += 1) await publisher.publish('feed.other', `o${i}`, { ack: true });
    await live.waitCount(6);
    const epoch = live.messages[0].header('epoch');

    const recent = await reader.history('feed.read', { recent: 4 });
    assert.deepEqual(recent.map((m) => m.text), ['m3', 'm4', 'm5', 'm6']);
    assert.deepEqual(recent.map((m) => m.header('offset')), ['3', '4', '5', '6']);
    assert.equal(recent.channel, 'feed.read');
    assert.equal(recent.epoch, epoch);
    assert.equal(recent.offset, 6);

    const since = await reader.history('feed.read', { since: 4, epoch });
    assert.deepEqual(since.map((m) => m.text), ['m5', 'm6']);
    assert.equal(since.recovered, true);

    const otherEpoch = await reader.history('feed.read', { since: 4, epoch: '0000000000000000' });
    assert.deepEqual([...otherEpoch], []);
    assert.equal(otherEpoch.recovered, false);

    // Reads of two channels at once get their own messages.
    const [a, b] = await Promise.all([
      reader.history('feed.read', { recent: 2 }),
      reader.history('feed.other', { recent: 5 }),
    ]);
    assert.deepEqual(a.map((m) => m.text), ['m5', 'm6']);
    assert.deepEqual(b.map((m) => m.text), ['o1', 'o2']);

    const none = await reader.history('no-history', { recent: 10 });
    assert.deepEqual([...none], []);
    assert.equal(none.epoch, undefined);
    assert.equal(none.offset, 0);

    // The messages read went to the reads only: the subscription saw each message once.
    await publisher.publish('feed.read', 'm7', { ack: true });
    await live.waitCount(7);
    assert.deepEqual(live.bodies(), ['m1', 'm2', 'm3', 'm4', 'm5', 'm6', 'm7']);
  });

  test('messages the server sends again are not delivered twice', async () => {
    const client = await open(server.url);
    const box = inbox();
    await client.subscribe('feed.again', box.handler);
    for (let i = 1; i <= 4; i += 1) await client.publish('feed.again', `m${i}`, { ack: true });
    await box.waitCount(4);
    const epoch = box.messages[0].header('epoch');
    // A catch-up on a channel already subscribed sends its messages again (docs/protocol.md).
    const answer = await client.request({ command: 'subscribe', headers: { subscribe: 'feed.again', since: 1, epoch } });
    assert.equal(answer.command, 'subscribed');
    assert.equal(answer.header('count'), '3');
    await client.publish('feed.again', 'm5', { ack: true });
    await box.waitCount(5);
    assert.deepEqual(box.bodies(), ['m1', 'm2', 'm3', 'm4', 'm5']);
  });

  test('a network path that goes silent is found by ping and replaced, and nothing is missed', async () => {
    const relay = await relayTo();
    const subscriber = await open(relay.url, { pingAfter: 200, pingTimeout: 300, reconnectDelay: 20 });
    const publisher = await open(server.url);
    const box = inbox();
    await subscriber.subscribe('feed.silent', box.handler);
    await publisher.publish('feed.silent', 'before', { ack: true });
    await box.waitCount(1);

    const closed = nextEvent(subscriber, 'close', 5000);
    const reconnected = nextEvent(subscriber, 'reconnect', 10000);
    const started = Date.now();
    relay.silence();
    await publisher.publish('feed.silent', 'while silent', { ack: true });
    const event = await closed;
    const elapsed = Date.now() - started;
    assert.equal(event.reason, 'no answer to ping');
    assert.equal(event.code, 1006);
    assert.equal(event.willReconnect, true);
    // At least the ping's timeout; at most the silence before the ping, its timeout and slack
    // for a loaded machine.
    assert.ok(elapsed >= 300 && elapsed < 200 + 300 + 1500, `detected after ${elapsed} ms`);

    await reconnected;
    assert.equal(relay.accepted(), 2);
    await publisher.publish('feed.silent', 'after', { ack: true });
    await box.waitCount(3);
    assert.deepEqual(box.bodies(), ['before', 'while silent', 'after']);
  });

  test('pings keep a quiet, healthy connection open', async () => {
    const client = await open(server.url, { pingAfter: 100, pingTimeout: 500 });
    const closes = [];
    client.on('close', (event) => closes.push(event));
    const box = inbox();
    await client.subscribe('feed.quiet', box.handler);
    await sleep(1200); // many silent periods, each answered by a pong
    assert.deepEqual(closes, []);
    assert.equal(client.state, 'open');
    await client.publish('feed.quiet', 'still here', { ack: true });
    await box.waitCount(1);
  });
});

describe('history across a restart', () => {
  let server;
  let client;
  let publisher;
  after(async () => {
    await client?.close();
    await publisher?.close();
    await server?.stop();
  });

  test('after lhttpd restarts with a memory store, the gap names the new epoch and new messages arrive', async () => {
    server = await startLhttpd({ config: CONFIG });
    const { port } = server;
    client = await connect(server.url, { reconnectDelay: 50, maxReconnectDelay: 400 });
    publisher = await connect(server.url);
    const box = inbox();
    await client.subscribe('feed.restart', box.handler);
    for (let i = 1; i <= 3; i += 1) await publisher.publish('feed.restart', `m${i}`, { ack: true });
    await box.waitCount(3);
    const before = box.messages[2].header('epoch');
    await publisher.close();

    const gap = nextEvent(client, 'gap', 15000);
    await server.stop();
    server = await startLhttpd({ port, config: CONFIG });
    const event = await gap;
    assert.equal(event.channel, 'feed.restart');
    assert.equal(event.lastEpoch, before);
    assert.equal(event.lastOffset, 3);
    assert.notEqual(event.epoch, before);
    assert.equal(event.offset, 0);

    // Offset 1 of the new epoch is new, although it is below the last offset of the old one.
    publisher = await connect(server.url);
    await publisher.publish('feed.restart', 'new', { ack: true });
    await box.waitCount(4);
    assert.deepEqual(box.bodies(), ['m1', 'm2', 'm3', 'new']);
    assert.equal(box.messages[3].header('offset'), '1');
  });
});
