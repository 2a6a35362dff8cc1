// The chat demo in a real headless Chromium (Debian's /usr/bin/chromium; no browser is ever
// downloaded), served by a real lhttpd: two people chat, lhttpd restarts, both pages show the
// loss, come back by themselves and chat again; where lhttpd keeps the room's history, a
// reload shows the recent conversation; where it has presence, the page lists who is in the
// room; served over https://, the page chats over wss://.
// Saves target/browser-test/chat.png.

import assert from 'node:assert/strict';
import { mkdir, readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { test } from 'node:test';

import { httpsFetch, repoRoot, selfSignedCertificate, startLhttpd } from '../../sdk/js/test/lhttpd.js';

// playwright-core and ws are installed with the SDK package (sdk/js/node_modules).
const requireFromSdk = createRequire(resolve(repoRoot, 'sdk/js/package.json'));
const { chromium } = requireFromSdk('playwright-core');
const { WebSocket } = requireFromSdk('ws');

const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
  '--disable-quic',
];
const WAIT = { timeout: 15000 };

/**
 * Opens the chat page at `url` in its own browser context (own storage) as `name`; waits until
 * joined. `contextOptions` are Playwright's, for the context. `sockets` lists the URLs of the
 * WebSockets the page opened.
 */
async function openChat(browser, url, name, contextOptions = {}) {
  const context = await browser.newContext({ viewport: { width: 1000, height: 620 }, ...contextOptions });
  const page = await context.newPage();
  const errors = [];
  const sockets = [];
  page.on('pageerror', (error) => errors.push(error));
  page.on('websocket', (socket) => sockets.push(socket.url()));
  await page.goto(url);
  await page.fill('#nick', name);
  await page.press('#nick', 'Tab'); // commits the name (change event)
  await page.locator('#status[data-state="open"]').waitFor(WAIT);
  return { page, errors, sockets };
}

async function say(page, text) {
  await page.fill('#input', text);
  await page.click('#send');
}

/** Waits until `page` shows a chat line with `text`, and returns its sender's name. */
async function seen(page, text) {
  const line = page.locator('#messages li.chat', { hasText: text });
  await line.waitFor(WAIT);
  return line.locator('.nick').textContent();
}

/**
 * lhttpd embeds the page and the SDK at build time: a stale binary would test old files.
 * `ca`: the certificate to trust, for an https:// base.
 */
async function assertServesCurrentFiles(base, ca) {
  const files = { '/': 'web/index.html', '/chat.js': 'web/chat.js', '/chat.css': 'web/chat.css', '/sdk/lhttp.js': 'sdk/js/lhttp.js' };
  for (const [path, file] of Object.entries(files)) {
    const served = ca ? (await httpsFetch(`${base}${path}`, { ca })).body : await (await fetch(`${base}${path}`)).text();
    const current = await readFile(resolve(repoRoot, file), 'utf8');
    assert.ok(served === current, `lhttpd serves an old ${file}: rebuild it (cargo build --bin lhttpd)`);
  }
}

test('two people chat, and chat again after lhttpd restarts', async (t) => {
  let server = await startLhttpd();
  const { port } = server;
  t.after(() => server.stop());
  await assertServesCurrentFiles(server.http);
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  t.after(() => browser.close());

  const alice = await openChat(browser, `${server.http}/`, 'alice');
  const bob = await openChat(browser, `${server.http}/`, 'bob');
  assert.equal(await alice.page.inputValue('#room'), 'chatroom');

  await say(alice.page, 'Hello Bob! <b>not bold</b>');
  assert.equal(await seen(bob.page, 'Hello Bob!'), 'alice');
  // Message data is text, never markup.
  assert.equal(await bob.page.locator('#messages b').count(), 0);
  assert.equal(await bob.page.locator('#messages li.chat .text').last().textContent(), 'Hello Bob! <b>not bold</b>');
  assert.match(await bob.page.locator('#people').textContent(), /alice/);

  // lhttpd goes away: both pages say so, and sending is disabled.
  await server.stop();
  for (const { page } of [alice, bob]) {
    await page.locator('#status[data-state="closed"]').waitFor(WAIT);
    assert.equal(await page.isDisabled('#send'), true);
  }

  // It comes back on the same port: both pages reconnect and rejoin the room by themselves.
  server = await startLhttpd({ port });
  for (const { page } of [alice, bob]) {
    await page.locator('#status[data-state="open"]').waitFor({ timeout: 20000 });
    await page.locator('#messages li.system', { hasText: 'Reconnected' }).waitFor(WAIT);
  }
  await say(bob.page, 'Welcome back, Alice.');
  assert.equal(await seen(alice.page, 'Welcome back, Alice.'), 'bob');
  await say(alice.page, 'Thanks, still here.');
  assert.equal(await seen(bob.page, 'Thanks, still here.'), 'alice');
  assert.match(await alice.page.locator('#people').textContent(), /bob/);

  const shots = resolve(repoRoot, 'target/browser-test');
  await mkdir(shots, { recursive: true });
  await alice.page.screenshot({ path: resolve(shots, 'chat.png') });

  assert.deepEqual([...alice.errors, ...bob.errors], [], 'no uncaught errors in the pages');
});

test('rooms are channels; original clients share the page\'s default room', async (t) => {
  const server = await startLhttpd();
  t.after(() => server.stop());
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  t.after(() => browser.close());

  const carol = await openChat(browser, `${server.http}/`, 'carol');
  const dave = await openChat(browser, `${server.http}/`, 'dave');

  // A client of the original SDK sends what its demo sent: no nick, room "chatroom".
  const original = new WebSocket(server.url);
  t.after(() => original.close());
  await new Promise((resolveOpen, reject) => {
    original.once('open', resolveOpen);
    original.once('error', reject);
  });
  const publish = (room, text) => original.send(`LHTTP/1.0 chat\r\npublish:${room}\r\n\r\n${text}`);
  publish('chatroom', 'hello from the original SDK');
  assert.equal(await seen(carol.page, 'hello from the original SDK'), 'anonymous');

  // Dave moves to another room, as typing it and pressing Enter does.
  await dave.page.fill('#room', 'backstage');
  await dave.page.press('#room', 'Enter');
  await dave.page.locator('#messages li.system', { hasText: 'You are in #backstage' }).waitFor(WAIT);
  assert.match(dave.page.url(), /#backstage$/);
  await say(dave.page, 'dave is backstage');
  assert.equal(await seen(dave.page, 'dave is backstage'), 'dave');

  // One publisher's messages arrive in order: once the last one is shown, an earlier one that
  // crossed rooms would be shown too.
  publish('backstage', 'backstage only');
  publish('chatroom', 'chatroom only');
  publish('backstage', 'backstage end');
  await seen(carol.page, 'chatroom only');
  await seen(dave.page, 'backstage end');
  assert.equal(await carol.page.locator('#messages li.chat', { hasText: 'backstage' }).count(), 0);
  assert.equal(await dave.page.locator('#messages li.chat', { hasText: 'chatroom only' }).count(), 0);
  assert.equal(await dave.page.locator('#messages li.chat', { hasText: 'hello from the original' }).count(), 1);

  // A link to a room opens it.
  const erin = await openChat(browser, `${server.http}/#backstage`, 'erin');
  assert.equal(await erin.page.inputValue('#room'), 'backstage');
  assert.deepEqual([...carol.errors, ...dave.errors, ...erin.errors], []);
});

test('where lhttpd keeps the room\'s history, a reload shows the recent conversation', async (t) => {
  // History for the default room only; room "elsewhere" keeps none.
  const config = '[[channels]]\npattern = "chatroom"\nhistory_size = 100\n\n[history]\nstore = "memory"\n';
  const server = await startLhttpd({ config });
  t.after(() => server.stop());
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  t.after(() => browser.close());

  const alice = await openChat(browser, `${server.http}/`, 'alice');
  const bob = await openChat(browser, `${server.http}/`, 'bob');
  const lines = ['Morning, Bob.', 'Did the build pass?', 'Ping me when it does.'];
  for (const line of lines) await say(alice.page, line);
  await say(bob.page, 'It passed.');
  assert.equal(await seen(bob.page, 'Ping me when it does.'), 'alice');
  await seen(alice.page, 'It passed.');

  // Bob reloads: the page opens with the conversation so far, in order, each line once.
  await bob.page.reload();
  await bob.page.locator('#status[data-state="open"]').waitFor(WAIT);
  assert.equal(await seen(bob.page, 'It passed.'), 'bob');
  const texts = bob.page.locator('#messages li.chat .text');
  await bob.page.waitForFunction((n) => document.querySelectorAll('#messages li.chat').length >= n, 4, WAIT);
  assert.deepEqual(await texts.allTextContents(), [...lines, 'It passed.']);
  assert.deepEqual(await bob.page.locator('#messages li.chat .nick').allTextContents(), ['alice', 'alice', 'alice', 'bob']);
  assert.match(await bob.page.locator('#people').textContent(), /alice/);
  // And the conversation goes on live.
  await say(alice.page, 'Great, thanks.');
  assert.equal(await seen(bob.page, 'Great, thanks.'), 'alice');
  assert.equal(await bob.page.locator('#messages li.chat', { hasText: 'Did the build pass?' }).count(), 1);

  // A room the server keeps no history of opens empty after a reload, and chat goes on.
  const carol = await openChat(browser, `${server.http}/#elsewhere`, 'carol');
  const dave = await openChat(browser, `${server.http}/#elsewhere`, 'dave');
  await say(carol.page, 'Nothing kept here.');
  await seen(dave.page, 'Nothing kept here.');
  await dave.page.reload();
  await dave.page.locator('#status[data-state="open"]').waitFor(WAIT);
  await dave.page.locator('#messages li.system', { hasText: 'You are in #elsewhere' }).waitFor(WAIT);
  await say(carol.page, 'Still here.');
  assert.equal(await seen(dave.page, 'Still here.'), 'carol');
  assert.equal(await dave.page.locator('#messages li.chat', { hasText: 'Nothing kept here.' }).count(), 0);

  assert.deepEqual([...alice.errors, ...bob.errors, ...carol.errors, ...dave.errors], [], 'no uncaught errors in the pages');
});

test('where lhttpd has presence for the room, the page shows who is in it', async (t) => {
  const config = '[[channels]]\npattern = "chatroom"\npresence = true\njoin_leave = true\n';
  const server = await startLhttpd({ config });
  t.after(() => server.stop());
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  t.after(() => browser.close());
  const names = (page) => page.locator('#members li').allTextContents();
  const until = (page, list) => page.waitForFunction(
    (want) => JSON.stringify([...document.querySelectorAll('#members li')].map((li) => li.textContent)) === want,
    JSON.stringify(list), WAIT,
  );

  const alice = await openChat(browser, `${server.http}/`, 'alice');
  await until(alice.page, ['alice']);
  assert.equal(await alice.page.locator('#members li.me').textContent(), 'alice');
  const bob = await openChat(browser, `${server.http}/`, 'bob');
  // Bob's page asks who is there; Alice's learns of Bob from his join.
  await until(bob.page, ['alice', 'bob']);
  await until(alice.page, ['alice', 'bob']);
  assert.equal(await alice.page.locator('#member-count').textContent(), '(2)');
  // Joins and leaves are not chat lines.
  assert.equal(await alice.page.locator('#messages li.chat').count(), 0);

  // Bob closes his page: Alice's list drops him.
  await bob.page.context().close();
  await until(alice.page, ['alice']);
  assert.equal(await alice.page.locator('#member-count').textContent(), '(1)');

  // A room without presence shows no list.
  await alice.page.fill('#room', 'elsewhere');
  await alice.page.press('#room', 'Tab');
  await alice.page.locator('#messages li.system', { hasText: 'You are in #elsewhere' }).waitFor(WAIT);
  await alice.page.locator('#members-box').waitFor({ state: 'hidden', ...WAIT });
  assert.deepEqual(await names(alice.page), []);
  assert.deepEqual(alice.errors, [], 'no uncaught errors in the page');
});

test('served over https://, the page chats over wss://', async (t) => {
  const certificate = await selfSignedCertificate();
  t.after(() => certificate.remove());
  const server = await startLhttpd({ tls: certificate });
  t.after(() => server.stop());
  assert.match(server.http, /^https:\/\/localhost:/);
  await assertServesCurrentFiles(server.http, certificate.ca);
  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  t.after(() => browser.close());

  // The test's certificate is self-signed: these contexts accept it, as a browser that trusts
  // its issuer would.
  const trusting = { ignoreHTTPSErrors: true };
  const frank = await openChat(browser, `${server.http}/`, 'frank', trusting);
  const grace = await openChat(browser, `${server.http}/`, 'grace', trusting);

  await say(frank.page, 'Is this line encrypted?');
  assert.equal(await seen(grace.page, 'Is this line encrypted?'), 'frank');
  await say(grace.page, 'From end to server, yes.');
  assert.equal(await seen(frank.page, 'From end to server, yes.'), 'grace');

  // The page took its WebSocket's scheme from its own: wss:// on the page's host and port.
  for (const { sockets } of [frank, grace]) {
    assert.deepEqual(sockets, [`wss://localhost:${server.port}/`]);
  }
  assert.deepEqual([...frank.errors, ...grace.errors], [], 'no uncaught errors in the pages');
});
