// Request/reply and queue-group workers against a real lhttpd: request(channel, ...) with its
// terminal answers (reply, 503, 504, 500), streamed partial answers, serve() workers sharing
// work exactly once within their credit, drain, inboxes, and rejoining after a server restart.

import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';

import { connect, LhttpError, Message } from '../lhttp.js';
import { nextEvent, startLhttpd, waitFor } from './lhttpd.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** A promise with its resolve function, to hold handlers until a test lets them go. */
function gate() {
  let open;
  const promise = new Promise((r) => {
    open = r;
  });
  return { promise, open };
}

/** Settles to the error a promise rejects with, failing the test if it resolves. */
async function rejection(promise) {
  return promise.then(
    (value) => assert.fail(`expected a rejection, got ${value?.command ?? value}`),
    (error) => error,
  );
}

describe('requests and workers against lhttpd', () => {
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

  test('a request to a channel gets the worker reply with its status and headers', async () => {
    const worker = await open();
    const requester = await open();
    const seen = [];
    await worker.serve('users', 'lookup', (message) => {
      seen.push(message);
      return { status: 201, headers: { 'x-found': 'yes' }, body: `user ${message.text}` };
    });

    const answer = await requester.request('users', '7', { command: 'lookup', headers: { 'x-trace': 't1' } });
    assert.equal(answer.command, 'reply');
    assert.equal(answer.text, 'user 7');
    assert.equal(answer.header('status'), '201');
    assert.equal(answer.header('x-found'), 'yes');
    // An answer, not a delivery: no routing headers of the worker's side.
    for (const name of ['publish', 'reply-to', 'ack', 'queue', 'delivery-id']) {
      assert.equal(answer.header(name), undefined, name);
    }
    const [delivery] = seen;
    assert.equal(delivery.command, 'lookup');
    assert.equal(delivery.channel, 'users');
    assert.equal(delivery.header('queue'), 'lookup');
    assert.equal(delivery.header('x-trace'), 't1');
    assert.match(delivery.header('reply-to'), /^_inbox\./);
    assert.match(delivery.header('delivery-id'), /^\d+$/);
  });

  test('a plain subscriber answers a request, and the message form of request() still works', async () => {
    const responder = await open();
    const requester = await open();
    await responder.subscribe('echo', (message, client) => {
      client.publish(message.header('reply-to'), `echo ${message.text}`, { command: 'echoed' });
    });
    const answer = await requester.request('echo', 'hi');
    assert.equal(answer.command, 'echoed');
    assert.equal(answer.text, 'echo hi');

    const viaMessage = await requester.request(
      new Message('ask', [['publish', 'echo'], ['reply-to', '']], 'old form'),
    );
    assert.equal(viaMessage.text, 'echo old form');
  });

  test('a request nobody serves is answered 503 at once', async () => {
    const requester = await open();
    const error = await rejection(requester.request('nobody-serves-this', 'x', { timeout: 30000 }));
    assert.ok(error instanceof LhttpError);
    assert.equal(error.status, 503);
    assert.match(error.reason, /no responders/);
  });

  test('a request whose worker does not answer in time is answered 504 by the server', async () => {
    const worker = await open();
    const requester = await open();
    const held = gate();
    await worker.serve('slow', 'g', () => held.promise);
    const error = await rejection(requester.request('slow', 'x', { timeout: 300 }));
    // 504 from the server, not the client's own timer (status 0).
    assert.equal(error.status, 504);
    held.open('too late');
  });

  test('streamed answers: partial replies reach onPartial in order, the last one settles', async () => {
    const worker = await open();
    const requester = await open();
    await worker.serve('stream', 'g', async (message, reply) => {
      for (let i = 1; i <= 3; i += 1) {
        // Longer, all together, than the request's timeout: each partial reply moves it back.
        await sleep(400);
        reply.partial({ headers: { part: String(i) }, body: `chunk ${i}` });
      }
      return 'done';
    });
    const partials = [];
    const answer = await requester.request('stream', 'go', {
      timeout: 1000,
      onPartial: (message) => partials.push(message),
    });
    assert.deepEqual(
      partials.map((m) => [m.header('partial'), m.header('part'), m.text]),
      [
        ['true', '1', 'chunk 1'],
        ['true', '2', 'chunk 2'],
        ['true', '3', 'chunk 3'],
      ],
    );
    assert.equal(answer.text, 'done');
    assert.equal(answer.header('partial'), undefined);
  });

  test('three workers share 300 requests, each handled exactly once and answered to its sender', async () => {
    const handled = new Map(); // body -> worker names
    const workers = await Promise.all([open(), open(), open()]);
    const counts = [0, 0, 0];
    await Promise.all(
      workers.map((client, n) =>
        client.serve('work', 'pool', async (message) => {
          counts[n] += 1;
          handled.set(message.text, [...(handled.get(message.text) ?? []), n]);
          await sleep(Math.random() * 5);
          return `w${n}:${message.text.toUpperCase()}`;
        }),
      ),
    );
    const requester = await open();
    const bodies = Array.from({ length: 300 }, (_, i) => `job-${i}`);
    const answers = await Promise.all(bodies.map((body) => requester.request('work', body, { timeout: 30000 })));

    answers.forEach((answer, i) => assert.match(answer.text, new RegExp(`^w[012]:JOB-${i}$`)));
    assert.equal(handled.size, 300);
    for (const [body, names] of handled) assert.equal(names.length, 1, `${body} handled by ${names}`);
    assert.equal(counts.reduce((a, b) => a + b), 300);
    for (const count of counts) assert.ok(count > 0, `every worker got work: ${counts}`);
  });

  test('a worker never runs more handlers at once than its credit', async () => {
    const worker = await open();
    const requester = await open();
    let running = 0;
    let most = 0;
    await worker.serve(
      'credit',
      'g',
      async (message) => {
        running += 1;
        most = Math.max(most, running);
        await sleep(30);
        running -= 1;
        return message.text;
      },
      { credit: 3 },
    );
    const answers = await Promise.all(
      Array.from({ length: 30 }, (_, i) => requester.request('credit', String(i), { timeout: 30000 })),
    );
    assert.deepEqual(
      answers.map((a) => a.text),
      Array.from({ length: 30 }, (_, i) => String(i)),
    );
    assert.equal(most, 3, 'three at once, never more');
  });

  test('drain resolves once the work in hand is finished, then the worker gets no more', async () => {
    const worker = await open();
    const requester = await open();
    const held = gate();
    let started = 0;
    const membership = await worker.serve(
      'draining',
      'g',
      async (message) => {
        started += 1;
        await held.promise;
        return `finished ${message.text}`;
      },
      { credit: 2 },
    );
    const pending = [requester.request('draining', 'a'), requester.request('draining', 'b')];
    await waitFor(() => started === 2, { what: 'both requests running' });

    let drained = false;
    const draining = membership.drain().then(() => {
      drained = true;
    });
    await sleep(300);
    assert.equal(drained, false, 'drain waits for the handlers');
    held.open();
    await draining;
    assert.deepEqual(
      (await Promise.all(pending)).map((a) => a.text),
      ['finished a', 'finished b'],
    );
    // The group is gone with its only member: nobody serves the channel any more.
    const error = await rejection(requester.request('draining', 'c', { timeout: 2000 }));
    assert.equal(error.status, 503);
    assert.equal(started, 2);
  });

  test('a handler that throws answers 500, and the worker goes on serving', async () => {
    const worker = await open();
    const requester = await open();
    const errors = [];
    worker.on('error', (event) => errors.push(event));
    await worker.serve('fragile', 'g', (message) => {
      if (message.text === 'bad') throw new Error('secret detail');
      return 'fine';
    });
    const error = await rejection(requester.request('fragile', 'bad'));
    assert.equal(error.status, 500);
    assert.equal(error.reason, 'handler failed'); // the exception's text stays in the worker
    assert.equal(errors[0].source, 'handler');
    assert.equal(errors[0].error.message, 'secret detail');
    assert.equal((await requester.request('fragile', 'good')).text, 'fine');
  });

  test('queue deliveries go to serve(), plain copies to subscribe(), messages are acknowledged', async () => {
    const both = await open(); // serves and subscribes plainly
    const only = await open(); // serves only
    const served = [];
    const plain = [];
    const stray = [];
    await both.serve('mix', 'g', (message) => {
      served.push(message.text);
    });
    await only.serve('mix', 'g', (message) => {
      served.push(message.text);
    });
    await both.subscribe('mix', (message) => plain.push(message));
    only.on('message', (event) => stray.push(event.message));
    const publisher = await open();
    // Plain messages, not requests: with credit 1, the 10 go round only if each is acknowledged.
    for (let i = 0; i < 10; i += 1) publisher.publish('mix', `m${i}`);
    await waitFor(() => served.length === 10 && plain.length === 10, { what: '10 served and 10 plain' });
    assert.deepEqual(served.sort(), Array.from({ length: 10 }, (_, i) => `m${i}`).sort());
    assert.ok(plain.every((m) => m.header('queue') === undefined), 'plain copies are not deliveries');
    assert.deepEqual(stray, [], 'deliveries are not `message` events');
  });

  test('a worker that disconnects mid-request: 502, or another worker with atLeastOnce', async () => {
    const requester = await open();
    const doomed = await connect(server.url);
    let taken = 0;
    await doomed.serve('fragile-pool', 'g', () => {
      taken += 1;
      return new Promise(() => {}); // never answers
    });
    const lost = rejection(requester.request('fragile-pool', 'once', { timeout: 20000 }));
    await waitFor(() => taken === 1, { what: 'the first worker to take the request' });
    await doomed.close();
    const error = await lost;
    assert.equal(error.status, 502);

    const doomedAgain = await connect(server.url);
    taken = 0;
    await doomedAgain.serve('fragile-pool', 'g', () => {
      taken += 1;
      return new Promise(() => {});
    });
    const handedOn = requester.request('fragile-pool', 'again', { timeout: 20000, atLeastOnce: true });
    await waitFor(() => taken === 1, { what: 'the second worker to take the request' });
    const survivor = await open();
    await survivor.serve('fragile-pool', 'g', (message) => `survivor did ${message.text}`);
    await doomedAgain.close();
    assert.equal((await handedOn).text, 'survivor did again');
  });

  test('stop() leaves the group at once', async () => {
    const worker = await open();
    const requester = await open();
    const membership = await worker.serve('stopping', 'g', () => 'yes');
    assert.equal((await requester.request('stopping', 'x')).text, 'yes');
    await membership.stop();
    const error = await rejection(requester.request('stopping', 'x', { timeout: 2000 }));
    assert.equal(error.status, 503);
  });

  test('inbox() gives an address that reaches this connection only', async () => {
    const owner = await open();
    const other = await open();
    const address = await owner.inbox();
    assert.match(address, /^_inbox\.[0-9a-f]{8}\.[0-9a-f]{32}$/);
    const received = nextEvent(owner, 'message');
    other.publish(address, 'for your eyes', { command: 'note' });
    const { message } = await received;
    assert.equal(message.channel, address);
    assert.equal(message.text, 'for your eyes');
    // Nobody can subscribe to an inbox.
    const refused = await rejection(other.subscribe(address, () => {}));
    assert.equal(refused.status, 403);
  });

  test('bad serve() arguments are refused before anything is sent', async () => {
    const client = await open();
    assert.throws(() => client.serve('a b', 'g', () => {}), TypeError);
    assert.throws(() => client.serve('a', 'bad name!', () => {}), TypeError);
    assert.throws(() => client.serve('a', 'g', () => {}, { credit: 0 }), TypeError);
    await client.serve('twice', 'g', () => {});
    assert.throws(() => client.serve('twice', 'g', () => {}), TypeError);
    // The server's limit: credit above queues.max_credit (1000) is refused with 400.
    const refused = await rejection(client.serve('greedy', 'g', () => {}, { credit: 5000 }));
    assert.equal(refused.status, 400);
  });
});

describe('a worker across a server restart', () => {
  test('serve() joins its group again after reconnecting', async () => {
    let server = await startLhttpd();
    const port = server.port;
    const worker = await connect(server.url, { reconnectDelay: 100, maxReconnectDelay: 500 });
    const requester = await connect(server.url, { reconnectDelay: 100, maxReconnectDelay: 500 });
    try {
      await worker.serve('restart', 'g', (message) => `still here: ${message.text}`);
      assert.equal((await requester.request('restart', '1')).text, 'still here: 1');

      const rejoined = nextEvent(worker, 'reconnect', 30000);
      const requesterBack = nextEvent(requester, 'reconnect', 30000);
      await server.stop();
      server = await startLhttpd({ port });
      await Promise.all([rejoined, requesterBack]);
      assert.equal((await requester.request('restart', '2')).text, 'still here: 2');
    } finally {
      await Promise.all([worker.close(), requester.close()]);
      await server.stop();
    }
  });
});
