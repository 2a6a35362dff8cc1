// The SDK as pages of other sites use it: a page served from another origin imports
// /sdk/lhttp.js from lhttpd (a module script across origins loads only with CORS) and chats
// through it, in a real headless Chromium.

import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { resolve } from 'node:path';
import { test } from 'node:test';

import { repoRoot, startLhttpd } from '../../sdk/js/test/lhttpd.js';

const requireFromSdk = createRequire(resolve(repoRoot, 'sdk/js/package.json'));
const { chromium } = requireFromSdk('playwright-core');

const CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--no-first-run'];

test('a page of another origin imports the SDK from lhttpd and round-trips a message', async (t) => {
  const server = await startLhttpd();
  t.after(() => server.stop());
  const page = `<!doctype html><title>elsewhere</title><script type="module">
    import { connect } from '${server.http}/sdk/lhttp.js';
    const client = await connect('${server.url}');
    await client.subscribe('cors', (message) => { window.received = message.text; });
    client.publish('cors', 'from another origin');
  </script>`;
  const site = createServer((request, response) => {
    response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    response.end(page);
  });
  await new Promise((done) => site.listen(0, '127.0.0.1', done));
  t.after(() => site.close());
  // Another origin: localhost rather than 127.0.0.1, another port.
  const origin = `http://localhost:${site.address().port}`;

  const browser = await chromium.launch({ executablePath: '/usr/bin/chromium', headless: true, args: CHROMIUM_ARGS });
  t.after(() => browser.close());
  const tab = await browser.newPage();
  const errors = [];
  tab.on('pageerror', (error) => errors.push(String(error)));
  tab.on('console', (message) => message.type() === 'error' && errors.push(message.text()));
  await tab.goto(`${origin}/`);
  await tab.waitForFunction(() => window.received !== undefined, null, { timeout: 15000 }).catch(() => {});
  assert.equal(await tab.evaluate(() => window.received), 'from another origin', errors.join('\n'));

  const sdk = await fetch(`${server.http}/sdk/lhttp.js`);
  assert.equal(sdk.headers.get('access-control-allow-origin'), '*');
  const chat = await fetch(`${server.http}/`);
  assert.equal(chat.headers.get('access-control-allow-origin'), null, 'only the SDK is shared');
});
