// The admin page in a real headless Chromium (Debian's /usr/bin/chromium), served by a real
// lhttpd with [admin] enabled: it shows the live connections, channels and their subscribers,
// rates and plots that move with the traffic, and disconnects a user; with server.api_key it
// asks for the key and shows nothing until the right one is given.
// Saves target/browser-test/admin.png.

import assert from 'node:assert/strict';
import { createHmac } from 'node:crypto';
import { spawn } from 'node:child_process';
import { mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { test } from 'node:test';

import { freePort, repoRoot, startLhttpd, waitFor } from '../../sdk/js/test/lhttpd.js';

const requireFromSdk = createRequire(resolve(repoRoot, 'sdk/js/package.json'));
const { chromium } = requireFromSdk('playwright-core');
const { WebSocket } = requireFromSdk('ws');

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run', '--disable-quic'];
const WAIT = { timeout: 15000 };
const SECRET = 'test-only hs256 secret, 32+ bytes long!';
const KEY = 'an admin key long enough for lhttpd';

function token(sub) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const head = `${part({ alg: 'HS256', typ: 'JWT' })}.${part({ sub, exp: Math.floor(Date.now() / 1000) + 300 })}`;
  return `${head}.${createHmac('sha256', SECRET).update(head).digest('base64url')}`;
}

/** A raw WebSocket client subscribed to `channels`; `closed` resolves with the close code. */
async function subscriber(url, channels) {
  const ws = new WebSocket(url);
  await new Promise((ok, fail) => ws.once('open', ok).once('error', fail));
  const closed = new Promise((ok) => ws.once('close', (code) => ok(code)));
  const answered = new Promise((ok) => ws.once('message', ok));
  ws.send(`LHTTP/1.0 sub\r\nsubscribe:${channels}\r\nrequest-id:1\r\n\r\n`);
  await answered;
  return { ws, closed };
}

async function launch(t) {
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  t.after(() => browser.close());
  const page = await (await browser.newContext({ viewport: { width: 1100, height: 900 } })).newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error));
  return { page, errors };
}

test('the admin page shows the live server, plots its traffic and disconnects a user', async (t) => {
  const server = await startLhttpd({
    config: `[admin]\nenabled = true\n[auth]\nhs256_secret = "${SECRET}"\n[[channels]]\npattern = "room.*"\npresence = true\n`,
  });
  t.after(() => server.stop());
  // lhttpd embeds the page at build time: a stale binary would test old files.
  for (const [path, file] of [['/admin/', 'web/admin.html'], ['/admin/admin.js', 'web/admin.js'], ['/admin/admin.css', 'web/admin.css']]) {
    const served = await (await fetch(`${server.http}${path}`)).text();
    assert.ok(served === (await readFile(resolve(repoRoot, file), 'utf8')), `lhttpd serves an old ${file}: rebuild it`);
  }
  const ann = await subscriber(`${server.url}?token=${token('ann')}`, 'room.1');
  const bob = await subscriber(server.url, 'room.1 news');
  const carol = await subscriber(server.url, 'room.1');

  // Typed without the slash, the address leads to the page (whose relative links need it).
  const bare = await fetch(`${server.http}/admin`, { redirect: 'manual' });
  assert.equal(bare.status, 308);
  assert.equal(bare.headers.get('location'), '/admin/');

  const { page, errors } = await launch(t);
  await page.goto(`${server.http}/admin`);
  assert.equal(new URL(page.url()).pathname, '/admin/');
  await page.locator('#status[data-state="ok"]').waitFor(WAIT);
  await page.locator('#connections', { hasText: /^3$/ }).waitFor(WAIT);
  assert.equal(await page.textContent('#users'), '1');
  assert.equal(await page.textContent('#channel-count'), '2');
  assert.equal(await page.textContent('#subscriptions'), '4');
  assert.equal(await page.textContent('#presence-members'), '3');
  assert.equal(await page.getAttribute('#nats', 'data-state'), 'none');
  assert.equal(await page.isVisible('#nodes-panel'), false, 'a single node lists no nodes');
  // Channels, busiest first.
  const rows = page.locator('#channels tr');
  assert.deepEqual(await rows.evaluateAll((trs) => trs.map((tr) => [tr.dataset.channel, tr.querySelector('.subscribers').textContent])), [
    ['room.1', '3'],
    ['news', '1'],
  ]);
  await page.fill('#channel-filter', 'ne');
  await page.locator('#channels tr').first().and(page.locator('[data-channel="news"]')).waitFor(WAIT);
  await waitFor(async () => (await rows.count()) === 1, { what: 'the filtered list' });
  await page.fill('#channel-filter', '');

  // Traffic: a message a few milliseconds apart for two seconds; the rates and the plot show it.
  const publishing = (async () => {
    for (let i = 0; i < 200; i += 1) {
      bob.ws.send(`LHTTP/1.0 chat\r\npublish:room.1\r\n\r\nmessage ${i}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  })();
  await waitFor(async () => Number((await page.textContent('#rate-deliveries')).replace(/\D/g, '')) > 20, {
    what: 'a delivery rate on the page',
  });
  await publishing;
  await waitFor(async () => Number(await page.getAttribute('#plot-messages', 'data-samples')) >= 3, { what: 'plotted samples' });
  const plotted = await page.evaluate(() => {
    const canvas = document.getElementById('plot-messages');
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let coloured = 0;
    for (let i = 0; i < pixels.length; i += 4) if (pixels[i + 3] > 0 && pixels[i + 1] > pixels[i] + 40) coloured += 1;
    return coloured;
  });
  assert.ok(plotted > 20, `the messages plot draws its lines (${plotted} coloured pixels)`);

  const shots = resolve(repoRoot, 'target/browser-test');
  await mkdir(shots, { recursive: true });
  await page.screenshot({ path: resolve(shots, 'admin.png'), fullPage: true });

  // Disconnect ann: her connection closes with 4001, the others stay.
  await page.fill('#disconnect-user', 'ann');
  await page.click('#disconnect');
  await page.locator('#disconnect-result', { hasText: '1 connection of ann closed' }).waitFor(WAIT);
  assert.equal(await ann.closed, 4001);
  await page.locator('#connections', { hasText: /^2$/ }).waitFor(WAIT);
  assert.equal(await page.textContent('#users'), '0');
  assert.equal(bob.ws.readyState, WebSocket.OPEN);
  bob.ws.close();
  carol.ws.close();
  assert.deepEqual(errors, [], 'no uncaught errors in the page');
});

test('with server.api_key the admin page asks for the key and shows nothing without it', async (t) => {
  const server = await startLhttpd({ config: `[server]\napi_key = "${KEY}"\n[admin]\nenabled = true\npath = "/ops/"\n` });
  t.after(() => server.stop());
  const { page, errors } = await launch(t);
  await page.goto(`${server.http}/ops/`);
  await page.locator('#status[data-state="login"]').waitFor(WAIT);
  assert.equal(await page.isVisible('#dashboard'), false);
  assert.equal(await page.textContent('#connections'), '—', 'no figure without the key');

  await page.fill('#key', 'a wrong key that is long enough');
  await page.click('#login-submit');
  await page.locator('#login-error', { hasText: 'refused' }).waitFor(WAIT);
  assert.equal(await page.getAttribute('#status', 'data-state'), 'login');

  await page.fill('#key', KEY);
  await page.click('#login-submit');
  await page.locator('#status[data-state="ok"]').waitFor(WAIT);
  assert.equal(await page.isVisible('#dashboard'), true);
  assert.equal(await page.textContent('#connections'), '0');
  // The key stays in this tab only: a reload still works, a new context asks again.
  await page.reload();
  await page.locator('#status[data-state="ok"]').waitFor(WAIT);
  assert.deepEqual(errors, [], 'no uncaught errors in the page');
});

test('in a cluster the admin page lists every node and disconnects a user on all of them', async (t) => {
  // A real nats-server (Debian package nats-server) on a free port, two lhttpd nodes on it.
  const natsPort = await freePort();
  const nats = spawn('nats-server', ['-a', '127.0.0.1', '-p', String(natsPort)], { stdio: 'ignore' });
  t.after(() => nats.kill('SIGKILL'));
  const cluster = `[cluster]\nnats = ["nats://127.0.0.1:${natsPort}"]\npresence_interval_ms = 200\npresence_timeout_ms = 1500\n`;
  const auth = `[auth]\nhs256_secret = "${SECRET}"\n`;
  const nodes = [];
  for (let i = 0; i < 2; i += 1) {
    const node = await startLhttpd({ config: `[admin]\nenabled = true\n${auth}${cluster}` });
    t.after(() => node.stop());
    nodes.push(node);
  }
  const [a, b] = nodes;
  const ann = await subscriber(`${b.url}?token=${token('ann')}`, 'room.1');
  const bob = await subscriber(b.url, 'room.1');

  const { page, errors } = await launch(t);
  await page.goto(`${a.http}/admin/`);
  await page.locator('#nats[data-state="connected"]').waitFor(WAIT);
  const rows = page.locator('#nodes tr');
  await waitFor(async () => (await rows.count()) === 2, { timeout: 15000, what: 'both nodes listed' });
  const self = await page.textContent('#node');
  const listed = await rows.evaluateAll((trs) => trs.map((tr) => [tr.dataset.node, tr.querySelector('.connections').textContent]));
  assert.equal(listed[0][0], self, 'this node first');
  assert.match(await rows.first().locator('.name').textContent(), /\(this node\)$/);
  // Node b's own figures: its two connections.
  await waitFor(async () => (await rows.nth(1).locator('.connections').textContent()) === '2', { what: "node b's connections" });

  await page.fill('#disconnect-user', 'ann');
  await page.click('#disconnect');
  await page.locator('#disconnect-result', { hasText: '0 connections of ann closed on this node; the other nodes were asked' }).waitFor(WAIT);
  assert.equal(await ann.closed, 4001, 'ann, connected to the other node, is disconnected');
  await waitFor(async () => (await rows.nth(1).locator('.connections').textContent()) === '1', { what: 'node b down to one connection' });
  assert.equal(bob.ws.readyState, WebSocket.OPEN);
  bob.ws.close();
  assert.deepEqual(errors, [], 'no uncaught errors in the page');
});
