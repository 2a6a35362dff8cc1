// Subscription objects (client.newSubscription) against a real lhttpd: their states and events
// in order, messages on the object, objects and callbacks sharing one server subscription, a
// refusal, recovery after a lost connection and after a restart, async iteration with its
// bounded buffer, the client's close(), and the server ending a subscription.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { WebSocket } from 'ws';

import { connect, LhttpError, Subscription } from '../lhttp.js';
import { nextEvent, startLhttpd, waitFor } from './lhttpd.js';
import { startRelay } from './relay.js';

const CONFIG = `
[[channels]]
pattern = "feed.*"
history_size = 1000

[[channels]]
pattern = "room.*"
presence = true

[history]
store = "memory"
`;

const LIMIT = { timeout: 30000 };
const range = (from, to) => Array.from({ length: to - from + 1 }, (_, i) => from + i);

/** A WebSocket class that records every frame it sends. */
function sendingWebSocket(sent) {
  return class extends WebSocket {
    send(frame, ...rest) {
      sent.push(String(frame));
      return super.send(frame, ...rest);
    }
  };
}

/**
 * Records what a Subscription dispatches, in order: `sequence` of event types (messages
 * included), with the object's state when each came, and the messages.
 */
function watch(subscription) {
  const sequence = [];
  const events = {};
  const messages = [];
  for (const type of ['subscribing', 'subscribed', 'unsubscribed', 'gap', 'error', 'message']) {
    events[type] = [];
    subscription.on(type, (event) => {
      sequence.push({ type, state: subscription.state });
      events[type].push(event);
      if (type === 'message') messages.push(event.message);
    });
  }
  return {
    sequence,
    events,
    messages,
    types: () => sequence.filter((s) => s.type !== 'message').map((s) => s.type),
    bodies: () => messages.map((m) => m.text),
    offsets: () => messages.map((m) => Number(m.header('offset'))),
    waitCount: (n) => waitFor(() => messages.length >= n, { timeout: 10000, what: `${n} messages` }),
  };
}

/** `promise`, or a failure after `ms` milliseconds. */
function within(promise, ms, what) {
  let timer;
  const late = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
  });
  return Promise.race([promise, late]).finally(() => clearTimeout(timer));
}

/** Reads a subscription with for-await in the background: what it got, and how it ended. */
function readAll(subscription) {
  const texts = [];
  const ended = (async () => {
    try {
      for await (const message of subscription) texts.push(message.text);
      return { done: true };
    } catch (error) {
      return { error };
    }
  })();
  return { texts, ended };
}

describe('subscription objects', () => {
  let server;
  const closers = [];
  const open = async (url, options) => {
    const client = await connect(url, options);
    closers.push(() => client.close());
    return client;
  };

  before(async () => {
    server = await startLhttpd({ config: CONFIG });
  });
  after(async () => {
    for (const close of closers.reverse()) await close();
    await server?.stop();
  });

  test('an object goes subscribing, then subscribed with the answer, then gets each message as an event', LIMIT, async () => {
    const publisher = await open(server.url);
    for (let i = 1; i <= 3; i += 1) await publisher.publish('feed.states', `m${i}`, { ack: true });
    const client = await open(server.url);
    const sub = client.newSubscription('feed.states', { recent: 2 });
    assert.ok(sub instanceof Subscription);
    assert.equal(sub.state, 'unsubscribed');
    assert.equal(sub.channel, 'feed.states');
    assert.equal(sub.client, client);
    assert.equal(sub.position, undefined);
    const seen = watch(sub);

    const subscribing = sub.subscribe();
    assert.equal(sub.state, 'subscribing');
    assert.equal(sub.subscribe(), subscribing, 'subscribe() again while subscribing is the same call');
    const answer = await subscribing;
    assert.equal(answer.command, 'subscribed');
    assert.equal(sub.state, 'subscribed');
    assert.equal(await sub.subscribe(), answer, 'subscribe() once subscribed answers at once');

    const [event] = seen.events.subscribed;
    assert.equal(event.answer, answer);
    assert.equal(event.channel, 'feed.states');
    assert.equal(event.epoch, answer.header('epoch'));
    assert.equal(typeof event.epoch, 'string');
    assert.equal(event.offset, 3);
    assert.equal(event.count, 2);
    assert.equal(event.recovered, undefined);
    assert.equal(seen.events.subscribing[0].reconnecting, false);

    await publisher.publish('feed.states', 'm4', { ack: true });
    await seen.waitCount(3);
    assert.deepEqual(seen.bodies(), ['m2', 'm3', 'm4']);
    assert.deepEqual(sub.position, { epoch: event.epoch, offset: 4 });
    // The recent messages came after `subscribed`, each while the object was subscribed.
    assert.deepEqual(
      seen.sequence.map((s) => `${s.type}:${s.state}`),
      ['subscribing:subscribing', 'subscribed:subscribed', 'message:subscribed', 'message:subscribed', 'message:subscribed'],
    );

    await sub.unsubscribe();
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(seen.types(), ['subscribing', 'subscribed', 'unsubscribed']);
    const [ended] = seen.events.unsubscribed;
    assert.equal(ended.source, 'client');
    assert.equal(ended.reason, 'unsubscribe');
    assert.deepEqual(client.channels, []);
    assert.deepEqual(sub.position, { epoch: event.epoch, offset: 4 }, 'the last position stays known');
    await sub.unsubscribe(); // again: nothing more happens
    assert.deepEqual(seen.types(), ['subscribing', 'subscribed', 'unsubscribed']);
  });

  test('two objects and a callback of one channel share one server subscription, and each leaves alone', LIMIT, async () => {
    const sent = [];
    const client = await open(server.url, { WebSocket: sendingWebSocket(sent) });
    const publisher = await open(server.url);
    const count = (header) => sent.filter((frame) => frame.includes(`\r\n${header}:shared\r\n`)).length;
    const a = client.newSubscription('shared');
    const b = client.newSubscription('shared');
    const seenA = watch(a);
    const seenB = watch(b);
    const callback = [];
    await Promise.all([a.subscribe(), b.subscribe(), client.subscribe('shared', (m) => callback.push(m.text))]);
    assert.equal(count('subscribe'), 1, 'the server is asked once');

    await publisher.publish('shared', 'one', { ack: true });
    await waitFor(() => seenA.messages.length === 1 && seenB.messages.length === 1 && callback.length === 1, { what: 'one each' });

    await a.unsubscribe();
    assert.equal(a.state, 'unsubscribed');
    assert.equal(b.state, 'subscribed');
    assert.equal(count('unsubscribe'), 0, 'others still hold the channel');
    await publisher.publish('shared', 'two', { ack: true });
    await waitFor(() => seenB.messages.length === 2 && callback.length === 2, { what: 'two for the others' });
    // One message reaches every holder in the same dispatch: `a` would have it by now.
    assert.deepEqual(seenA.bodies(), ['one']);

    // Removing every callback leaves the objects alone.
    await client.unsubscribe('shared');
    assert.equal(count('unsubscribe'), 0);
    await publisher.publish('shared', 'three', { ack: true });
    await seenB.waitCount(3);
    assert.deepEqual(callback, ['one', 'two']);

    // An object joining a channel already subscribed is subscribed at once, without asking.
    const c = client.newSubscription('shared');
    const seenC = watch(c);
    const joined = c.subscribe();
    assert.equal(c.state, 'subscribed');
    assert.deepEqual(seenC.types(), ['subscribing', 'subscribed']);
    assert.equal((await joined).command, 'ok');
    assert.equal(count('subscribe'), 1);
    await publisher.publish('shared', 'for b and c', { ack: true });
    await waitFor(() => seenB.messages.length === 4 && seenC.messages.length === 1, { what: 'b and c' });

    await b.unsubscribe();
    assert.equal(count('unsubscribe'), 0);
    await c.unsubscribe();
    assert.equal(count('unsubscribe'), 1, 'the last one tells the server');
    assert.deepEqual(client.channels, []);

    // Nothing of the channel reaches the client any more.
    const marker = [];
    await client.subscribe('shared-marker', (m) => marker.push(m.text));
    const stray = [];
    client.on('message', ({ message }) => message.channel === 'shared' && stray.push(message.text));
    await publisher.publish('shared', 'four', { ack: true });
    await publisher.publish('shared-marker', 'after four', { ack: true });
    await waitFor(() => marker.length === 1, { what: 'the marker' });
    assert.deepEqual(stray, []);
    assert.deepEqual(seenC.bodies(), ['for b and c']);
    assert.deepEqual(seenB.bodies(), ['one', 'two', 'three', 'for b and c']);
  });

  test('a refused subscription ends unsubscribed with status 403, and its iterator throws the refusal', LIMIT, async () => {
    const owner = await open(server.url);
    const address = await owner.inbox(); // nobody may subscribe to an inbox
    const client = await open(server.url);
    const sub = client.newSubscription(address);
    const seen = watch(sub);
    const error = await sub.subscribe().then(
      () => assert.fail('subscribing to an inbox must be refused'),
      (refusal) => refusal,
    );
    assert.ok(error instanceof LhttpError);
    assert.equal(error.status, 403);
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(seen.types(), ['subscribing', 'error', 'unsubscribed']);
    assert.equal(seen.events.error[0].error, error);
    assert.equal(seen.events.error[0].source, 'subscribe');
    const [ended] = seen.events.unsubscribed;
    assert.equal(ended.source, 'refused');
    assert.equal(ended.status, 403);
    assert.equal(ended.reason, error.reason);
    assert.equal(ended.error, error);
    assert.deepEqual(client.channels, []);
    await assert.rejects(sub.ready(), (e) => e instanceof LhttpError && e.reason === 'unsubscribed');

    // Iterating subscribes, and ends with the refusal.
    const reading = readAll(client.newSubscription(address));
    const { error: thrown } = await within(reading.ended, 10000, 'the refused iteration to end');
    assert.equal(thrown?.status, 403);
  });

  test('after a lost connection an object goes subscribing, then subscribed, with the missed messages once, in order', LIMIT, async () => {
    const relay = await startRelay(server.port);
    closers.push(() => relay.close());
    const client = await open(relay.url, { reconnectDelay: 20, maxReconnectDelay: 100 });
    const publisher = await open(server.url);
    const sub = client.newSubscription('feed.lost');
    const seen = watch(sub);
    await sub.subscribe();
    for (let i = 1; i <= 2; i += 1) await publisher.publish('feed.lost', `m${i}`, { ack: true });
    await seen.waitCount(2);
    const { epoch } = sub.position;

    relay.refuse(true);
    const closed = nextEvent(client, 'close');
    relay.cut();
    await closed;
    assert.equal(sub.state, 'subscribing');
    assert.equal(seen.events.subscribing.at(-1).reconnecting, true);
    await assert.rejects(sub.ready(50), (e) => e.reason === 'timeout', 'not ready while away');
    for (let i = 3; i <= 5; i += 1) await publisher.publish('feed.lost', `m${i}`, { ack: true });

    const back = nextEvent(sub, 'subscribed', 10000);
    relay.refuse(false);
    const event = await back;
    assert.equal(event.recovered, true);
    assert.equal(event.count, 3);
    assert.equal(event.epoch, epoch);
    await sub.ready(5000);
    await publisher.publish('feed.lost', 'm6', { ack: true });
    await seen.waitCount(6);
    assert.deepEqual(seen.bodies(), range(1, 6).map((i) => `m${i}`));
    assert.deepEqual(seen.offsets(), range(1, 6));
    assert.deepEqual(seen.types(), ['subscribing', 'subscribed', 'subscribing', 'subscribed']);
    assert.deepEqual(sub.position, { epoch, offset: 6 });
  });

  test('for await yields the messages in order, ends when the object unsubscribes, and break leaves it subscribed', LIMIT, async () => {
    const client = await open(server.url);
    const publisher = await open(server.url);
    const sub = client.newSubscription('feed.iterate');
    const reading = readAll(sub);
    assert.equal(sub.state, 'subscribing', 'iterating subscribes');
    await sub.ready(5000);
    for (let i = 1; i <= 3; i += 1) await publisher.publish('feed.iterate', `m${i}`, { ack: true });
    await waitFor(() => reading.texts.length === 3, { what: 'three messages read' });
    await sub.unsubscribe();
    assert.deepEqual(await within(reading.ended, 5000, 'the loop to end'), { done: true });
    assert.deepEqual(reading.texts, ['m1', 'm2', 'm3']);

    const again = client.newSubscription('feed.iterate');
    const seen = watch(again);
    const first = (async () => {
      for await (const message of again) return message.text;
      return undefined;
    })();
    await again.ready(5000);
    await publisher.publish('feed.iterate', 'm4', { ack: true });
    assert.equal(await within(first, 5000, 'the first message'), 'm4');
    assert.equal(again.state, 'subscribed', 'leaving the loop is not unsubscribing');
    await publisher.publish('feed.iterate', 'm5', { ack: true });
    await seen.waitCount(2);
    assert.deepEqual(seen.bodies(), ['m4', 'm5']);
  });

  test('a consumer slower than the channel gets what the buffer held, then a slow consumer error; the subscription goes on', LIMIT, async () => {
    const client = await open(server.url);
    const publisher = await open(server.url);
    const sub = client.newSubscription('feed.slow', { buffer: 3 });
    const seen = watch(sub);
    const iterator = sub[Symbol.asyncIterator]();
    await sub.ready(5000);
    for (let i = 1; i <= 5; i += 1) await publisher.publish('feed.slow', `m${i}`, { ack: true });
    await seen.waitCount(5);

    const read = [];
    for (let i = 0; i < 3; i += 1) read.push((await iterator.next()).value.text);
    assert.deepEqual(read, ['m1', 'm2', 'm3']);
    await assert.rejects(iterator.next(), (error) => {
      assert.ok(error instanceof LhttpError);
      assert.equal(error.status, 0);
      assert.equal(error.reason, 'slow consumer');
      return true;
    });
    assert.deepEqual(await iterator.next(), { value: undefined, done: true });

    // Only that iterator ended: events go on, and a new iterator reads live messages.
    assert.equal(sub.state, 'subscribed');
    const fresh = sub[Symbol.asyncIterator]();
    await publisher.publish('feed.slow', 'm6', { ack: true });
    assert.equal((await within(fresh.next(), 5000, 'm6 on a new iterator')).value.text, 'm6');
    await fresh.return();
    assert.deepEqual(seen.bodies(), range(1, 6).map((i) => `m${i}`));
  });

  test("the client's close() moves every object to unsubscribed and ends their iterators", LIMIT, async () => {
    const client = await connect(server.url);
    const held = client.newSubscription('feed.close');
    const other = client.newSubscription('room.close');
    const seenHeld = watch(held);
    const seenOther = watch(other);
    await Promise.all([held.subscribe(), other.subscribe()]);
    const reading = readAll(held);
    const late = client.newSubscription('feed.close-late');
    const pending = late.subscribe(); // its answer cannot have come yet

    await client.close();
    for (const [sub, seen] of [[held, seenHeld], [other, seenOther]]) {
      assert.equal(sub.state, 'unsubscribed');
      assert.deepEqual(seen.types(), ['subscribing', 'subscribed', 'unsubscribed']);
      const [ended] = seen.events.unsubscribed;
      assert.equal(ended.source, 'client');
      assert.equal(ended.reason, 'client closed');
    }
    assert.equal(late.state, 'unsubscribed');
    await assert.rejects(pending, (error) => error.reason === 'client closed');
    assert.deepEqual(await within(reading.ended, 5000, 'the loop to end'), { done: true });
    // A closed client subscribes nothing: the object stays unsubscribed.
    await assert.rejects(held.subscribe(), (error) => error.reason === 'client closed');
    assert.equal(held.state, 'unsubscribed');
    assert.deepEqual(seenHeld.types(), ['subscribing', 'subscribed', 'unsubscribed']);
  });

  test('an object on a wildcard pattern receives the channels it matches, with the concrete channel', LIMIT, async () => {
    const client = await open(server.url);
    const publisher = await open(server.url);
    const sub = client.newSubscription('sensor.*.temp');
    const seen = watch(sub);
    await sub.subscribe();
    for (const channel of ['sensor.1.temp', 'sensor.1.hum', 'sensor.2.temp']) {
      await publisher.publish(channel, channel, { ack: true });
    }
    await seen.waitCount(2);
    assert.deepEqual(seen.messages.map((m) => m.channel), ['sensor.1.temp', 'sensor.2.temp']);
  });

  test('without reconnection, a lost connection ends the object, and it cannot subscribe again', LIMIT, async () => {
    const relay = await startRelay(server.port);
    closers.push(() => relay.close());
    const client = await open(relay.url, { reconnect: false });
    const sub = client.newSubscription('feed.once');
    const seen = watch(sub);
    await sub.subscribe();
    const reading = readAll(sub);
    const ended = nextEvent(sub, 'unsubscribed');
    relay.cut();
    const event = await ended;
    assert.equal(event.source, 'closed');
    assert.equal(event.error.reason, 'connection closed');
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(seen.types(), ['subscribing', 'subscribed', 'unsubscribed']);
    const { error } = await within(reading.ended, 5000, 'the loop to end');
    assert.equal(error, event.error);
    await assert.rejects(sub.subscribe(), (e) => e.reason === 'connection closed');
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(client.channels, []);
  });

  test('an object subscribes with its presenceInfo', LIMIT, async () => {
    const client = await open(server.url);
    const sub = client.newSubscription('room.lobby', { presenceInfo: 'Ann' });
    await sub.subscribe();
    const list = await client.presence('room.lobby');
    assert.deepEqual(list.members.map((m) => m.info), ['Ann']);
  });

  test('bad arguments are refused before anything is sent', LIMIT, async () => {
    const client = await open(server.url);
    assert.throws(() => client.newSubscription('a b'), TypeError);
    assert.throws(() => client.newSubscription('a', { recent: -1 }), TypeError);
    assert.throws(() => client.newSubscription('a', { presenceInfo: 'two\nlines' }), TypeError);
    assert.throws(() => client.newSubscription('a', { buffer: 0 }), TypeError);
    assert.throws(() => new Subscription(), TypeError);
    assert.throws(() => client.newSubscription('a').ready(-1), TypeError);
    assert.deepEqual(client.channels, []);
  });
});

describe('a subscription object across a restart', () => {
  let server;
  let client;
  let publisher;
  after(async () => {
    await client?.close();
    await publisher?.close();
    await server?.stop();
  });

  test('after lhttpd restarts the object goes subscribing, subscribed, then reports the gap, and new messages arrive', LIMIT, async () => {
    server = await startLhttpd({ config: CONFIG });
    const { port } = server;
    client = await connect(server.url, { reconnectDelay: 50, maxReconnectDelay: 400 });
    publisher = await connect(server.url);
    const sub = client.newSubscription('feed.restart');
    const seen = watch(sub);
    await sub.subscribe();
    for (let i = 1; i <= 3; i += 1) await publisher.publish('feed.restart', `m${i}`, { ack: true });
    await seen.waitCount(3);
    const before = sub.position;
    assert.equal(before.offset, 3);
    await publisher.close();

    const gap = nextEvent(sub, 'gap', 15000);
    await server.stop();
    server = await startLhttpd({ port, config: CONFIG });
    const event = await gap;
    assert.equal(event.channel, 'feed.restart');
    assert.equal(event.lastEpoch, before.epoch);
    assert.equal(event.lastOffset, 3);
    assert.notEqual(event.epoch, before.epoch);
    assert.equal(event.offset, 0);
    assert.deepEqual(seen.types(), ['subscribing', 'subscribed', 'subscribing', 'subscribed', 'gap']);
    assert.equal(seen.sequence.at(-1).state, 'subscribed', 'the gap comes once subscribed again');
    assert.equal(seen.events.subscribed[1].recovered, false);

    publisher = await connect(server.url);
    await publisher.publish('feed.restart', 'new', { ack: true });
    await seen.waitCount(4);
    assert.deepEqual(seen.bodies(), ['m1', 'm2', 'm3', 'new']);
    assert.deepEqual(sub.position, { epoch: event.epoch, offset: 1 });
  });
});

describe('a subscription object the server ends', () => {
  const SECRET = 'test-only hs256 secret, 32+ bytes long!';
  let server;
  const clients = [];
  before(async () => {
    server = await startLhttpd({
      env: { LHTTPD_AUTH__ANONYMOUS: 'false', LHTTPD_AUTH__HS256_SECRET: SECRET },
      config: ['[[auth.rules]]', 'channels = "admin.>"', 'subscribe = true', 'publish = true', 'roles = ["admin"]', ''].join('\n'),
    });
  });
  after(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await server?.stop();
  });

  /** An HS256 JWT for `sub` with `roles`. */
  function token(sub, roles) {
    const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
    const head = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, roles, exp: Math.floor(Date.now() / 1000) + 300 })}`;
    return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
  }

  test("a token that no longer allows the channel ends the object with the server's reason", LIMIT, async () => {
    const client = await connect(server.url, { token: token('ops', ['admin']) });
    clients.push(client);
    const sub = client.newSubscription('admin.news');
    const seen = watch(sub);
    await sub.subscribe();
    const reading = readAll(sub);
    const ended = nextEvent(sub, 'unsubscribed');
    await client.authenticate(token('ops', []));
    const event = await ended;
    assert.equal(event.source, 'server');
    assert.match(event.reason, /not allowed/);
    assert.ok(event.error instanceof LhttpError);
    assert.equal(event.error.reason, event.reason);
    assert.equal(sub.state, 'unsubscribed');
    assert.deepEqual(seen.types(), ['subscribing', 'subscribed', 'unsubscribed']);
    assert.deepEqual(client.channels, []);
    const { error } = await within(reading.ended, 5000, 'the loop to end');
    assert.equal(error, event.error, 'the iterator throws what ended the subscription');

    // Subscribing again is refused now.
    await assert.rejects(sub.subscribe(), (refusal) => refusal.status === 403);
    assert.equal(seen.events.unsubscribed.at(-1).source, 'refused');
  });
});
