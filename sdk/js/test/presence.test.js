// Presence through the SDK against a real lhttpd: presence() lists members with the info they
// subscribed with and the caller's own id; join and leave messages reach the subscription's
// handler, carry no offset and are never taken for a gap; after a reconnection the member is
// listed again with the same info; a channel without presence is refused with 404.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { connect } from '../lhttp.js';
import { startLhttpd, waitFor } from './lhttpd.js';
import { startRelay } from './relay.js';

const CONFIG = `
[[channels]]
pattern = "room.*"
history_size = 100
presence = true
join_leave = true

[history]
store = "memory"
`;

describe('presence', () => {
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

  test('members are listed with their info, and joins and leaves reach subscribers', async () => {
    const watcher = await open(server.url);
    const seen = [];
    const gaps = [];
    watcher.on('gap', (event) => gaps.push(event));
    await watcher.subscribe('room.lobby', (m) => seen.push(m), { presenceInfo: 'Watcher' });
    const alice = await open(server.url);
    await alice.subscribe('room.lobby', () => {}, { presenceInfo: 'Alice' });

    const list = await watcher.presence('room.lobby');
    assert.equal(list.count, 2);
    assert.equal(list.listed, 2);
    assert.deepEqual(list.members.map((m) => m.info).sort(), ['Alice', 'Watcher']);
    const mine = list.members.find((m) => m.client === list.you);
    assert.equal(mine?.info, 'Watcher', 'the caller finds itself by its id');
    const counted = await watcher.presence('room.lobby', { limit: 0 });
    assert.deepEqual([counted.count, counted.members], [2, []]);

    await waitFor(() => seen.some((m) => m.command === 'join' && m.text === 'Alice'), { what: "Alice's join" });
    const join = seen.find((m) => m.text === 'Alice');
    assert.equal(join.header('offset'), undefined);
    // A chat message after the join still carries the channel's first offset.
    alice.publish('room.lobby', 'hello');
    await waitFor(() => seen.some((m) => m.text === 'hello'), { what: 'hello' });
    assert.equal(seen.find((m) => m.text === 'hello').header('offset'), '1');

    await alice.close();
    await waitFor(() => seen.some((m) => m.command === 'leave' && m.text === 'Alice'), { what: "Alice's leave" });
    assert.equal((await watcher.presence('room.lobby')).count, 1);
    assert.deepEqual(gaps, [], 'joins and leaves are not gaps');
  });

  test('after a reconnection the member is listed again, with the same info', async () => {
    const relay = await startRelay(server.port);
    closers.push(() => relay.close());
    const bob = await open(relay.url, { reconnectDelay: 20, maxReconnectDelay: 100 });
    await bob.subscribe('room.reconnect', () => {}, { presenceInfo: 'Bob' });
    const observer = await open(server.url);
    const before = await observer.presence('room.reconnect');
    assert.deepEqual(before.members.map((m) => m.info), ['Bob']);
    relay.cut();
    await waitFor(async () => {
      const now = await observer.presence('room.reconnect');
      return now.count === 1 && now.members[0].client !== before.members[0].client;
    }, { what: 'Bob back in the room' });
    const after = await observer.presence('room.reconnect');
    assert.equal(after.members[0].info, 'Bob');
  });

  test('a channel without presence is refused with 404', async () => {
    const client = await open(server.url);
    await assert.rejects(client.presence('plain'), (error) => error.status === 404);
  });
});
