// The HTTP gateway served by serve() workers: a real HTTP client (Node's fetch) gets the
// worker's status, headers and body; concurrent requests each get their own answer; streamed
// answers; a throwing handler is a 500.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { connect } from '../lhttp.js';
import { startLhttpd } from './lhttpd.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

const CONFIG = `
[[gateway]]
path = "/api/"
channel = "http.api"
queue = "workers"
timeout_ms = 20000

[[gateway]]
path = "/stream/"
channel = "http.stream"
queue = "streamers"
timeout_ms = 20000

[[gateway]]
path = "/restart/"
channel = "http.restart"
queue = "restarters"
timeout_ms = 20000

[[gateway]]
path = "/later/"
channel = "http.later"
queue = "latecomers"
timeout_ms = 20000
`;

describe('HTTP gateway served by serve()', () => {
  let server;
  const clients = [];

  before(async () => {
    server = await startLhttpd({ config: CONFIG });
    const worker = await connect(server.url);
    clients.push(worker);
    await worker.serve(
      'http.api',
      'workers',
      async (message) => {
        if (message.header('path') === '/api/fail') throw new Error('boom');
        // Out of order on purpose: answers are matched by reply address, not by arrival.
        await sleep(Math.random() * 20);
        return {
          status: message.header('method') === 'POST' ? 201 : 200,
          headers: { 'http-content-type': 'application/json', 'http-x-served-by': 'js-worker' },
          body: JSON.stringify({
            command: message.command,
            method: message.header('method'),
            path: message.header('path'),
            query: message.header('query') ?? null,
            accept: message.header('http-accept') ?? null,
            body: message.text,
          }),
        };
      },
      { credit: 8 },
    );
    await worker.serve('http.stream', 'streamers', async (message, reply) => {
      reply.partial({ status: 200, headers: { 'http-content-type': 'text/plain' }, body: 'one,' });
      await sleep(50);
      reply.partial('two,');
      return 'three';
    });
  });
  after(async () => {
    await Promise.all(clients.map((client) => client.close()));
    await server?.stop();
  });

  test('fetch() gets the worker status, response headers and body', async () => {
    const response = await fetch(`${server.http}/api/users/7?full=1`, {
      method: 'POST',
      headers: { accept: 'application/json', 'content-type': 'text/plain' },
      body: 'name=ann',
    });
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('content-type'), 'application/json');
    assert.equal(response.headers.get('x-served-by'), 'js-worker');
    assert.deepEqual(await response.json(), {
      command: 'http-request',
      method: 'POST',
      path: '/api/users/7',
      query: 'full=1',
      accept: 'application/json',
      body: 'name=ann',
    });
  });

  test('50 concurrent fetches are each answered with their own reply', async () => {
    const responses = await Promise.all(
      Array.from({ length: 50 }, (_, i) => fetch(`${server.http}/api/items/${i}`).then(async (r) => [r.status, await r.json()])),
    );
    responses.forEach(([status, json], i) => {
      assert.equal(status, 200);
      assert.equal(json.method, 'GET');
      assert.equal(json.path, `/api/items/${i}`);
    });
  });

  test('a streamed answer arrives as one HTTP response', async () => {
    const response = await fetch(`${server.http}/stream/x`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), 'text/plain');
    assert.equal(await response.text(), 'one,two,three');
  });

  test('a request made while no worker is connected waits for one', async () => {
    const answered = fetch(`${server.http}/later/job`).then(async (r) => [r.status, await r.text()]);
    await sleep(300); // the request is waiting in the route's group, with no member
    const late = await connect(server.url);
    clients.push(late);
    await late.serve('http.later', 'latecomers', (message) => `picked up ${message.header('path')}`);
    assert.deepEqual(await answered, [200, 'picked up /later/job']);
  });

  test('a worker restarted with drain() mid-load loses no HTTP request', async () => {
    const first = await connect(server.url);
    clients.push(first);
    const oldWorker = await first.serve(
      'http.restart',
      'restarters',
      async () => {
        await sleep(20);
        return 'old';
      },
      { credit: 4 },
    );
    const fetches = Array.from({ length: 40 }, (_, i) =>
      fetch(`${server.http}/restart/${i}`).then(async (r) => [r.status, await r.text()]),
    );
    await sleep(50);
    await oldWorker.drain(); // the requests it did not take wait in the group
    const second = await connect(server.url);
    clients.push(second);
    await second.serve('http.restart', 'restarters', () => 'new', { credit: 4 });
    const results = await Promise.all(fetches);
    for (const [status, text] of results) {
      assert.equal(status, 200);
      assert.ok(text === 'old' || text === 'new', text);
    }
    assert.ok(results.some(([, text]) => text === 'new'), 'the new worker took over');
  });

  test('a handler that throws gives HTTP 500', async () => {
    const response = await fetch(`${server.http}/api/fail`);
    assert.equal(response.status, 500);
    assert.doesNotMatch(await response.text(), /boom/);
  });
});
