// Test helper: a TCP relay on loopback between clients and a server, which a test can use to
// break the network path in the ways real networks do: cut every connection (both ends see
// the close), refuse new ones, or go silent (stop forwarding without closing anything, as a
// dead path or a lost NAT mapping does).

import { connect, createServer } from 'node:net';

/**
 * Listens on a free port of 127.0.0.1 and forwards every connection to `target` (a port of
 * 127.0.0.1).
 *
 * @returns {Promise<{port: number, url: string, accepted: () => number, cut: () => void,
 *   silence: () => void, refuse: (on: boolean) => void, close: () => Promise<void>}>}
 *   `url` is a WebSocket URL through the relay; `accepted()` counts the connections taken so
 *   far; `cut()` closes every open connection (both sides); `silence()` stops forwarding on
 *   every open connection and keeps it open; `refuse(true)` closes new connections at once
 */
export async function startRelay(target) {
  const pairs = new Set();
  const silenced = new Set();
  let refusing = false;
  let accepted = 0;
  const server = createServer((client) => {
    accepted += 1;
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = connect(target, '127.0.0.1');
    const pair = { client, upstream };
    pairs.add(pair);
    const end = () => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on('error', end).on('close', end);
    upstream.on('error', end).on('close', end);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();
  return {
    port,
    url: `ws://127.0.0.1:${port}/`,
    accepted: () => accepted,
    cut() {
      for (const { client, upstream } of [...pairs]) {
        client.destroy();
        upstream.destroy();
      }
    },
    silence() {
      for (const pair of [...pairs]) {
        pairs.delete(pair);
        silenced.add(pair);
        const { client, upstream } = pair;
        client.unpipe(upstream);
        upstream.unpipe(client);
        // Whatever arrives from now on is read and thrown away: nothing gets through, and
        // neither side hears of a close.
        client.removeAllListeners('data').on('data', () => {});
        upstream.removeAllListeners('data').on('data', () => {});
        client.resume();
        upstream.resume();
      }
    },
    refuse(on) {
      refusing = on;
    },
    close() {
      this.cut();
      for (const { client, upstream } of silenced) {
        client.destroy();
        upstream.destroy();
      }
      return new Promise((resolve) => server.close(() => resolve()));
    },
  };
}
