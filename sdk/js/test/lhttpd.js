// Test helper: runs a real lhttpd as a child process on a free loopback port, over TLS too
// (with a certificate made by the openssl command).
//
// The binary comes from $LHTTPD_BIN, or target/debug/lhttpd of the repository (build it with
// `cargo build --bin lhttpd`). Every process started here is killed when the test process exits,
// even after a failed assertion, so no server outlives the test run.

import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

export const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const binary = process.env.LHTTPD_BIN ? resolve(process.env.LHTTPD_BIN) : resolve(repoRoot, 'target/debug/lhttpd');

const running = new Set();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

/** A free TCP port on 127.0.0.1 (the kernel picks one; it is released before lhttpd binds it). */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolvePort(port));
    });
  });
}

/** Polls `check` every `interval` ms until it returns a truthy value, or fails after `timeout` ms. */
export async function waitFor(check, { timeout = 10000, interval = 50, what = 'condition' } = {}) {
  const deadline = Date.now() + timeout;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, interval));
  }
}

/** Resolves with the first event of `type` on `target` (an EventTarget), or fails after `timeout` ms. */
export function nextEvent(target, type, timeout = 10000) {
  return new Promise((resolveEvent, reject) => {
    const timer = setTimeout(() => {
      target.removeEventListener(type, listener);
      reject(new Error(`no ${type} event within ${timeout} ms`));
    }, timeout);
    const listener = (event) => {
      clearTimeout(timer);
      resolveEvent(event);
    };
    target.addEventListener(type, listener, { once: true });
  });
}

/**
 * Makes a self-signed certificate for `localhost` and `127.0.0.1` (P-256, valid for a day) with
 * the openssl command, in a temporary directory.
 *
 * @returns {Promise<{certFile: string, keyFile: string, ca: string, remove: () => void}>} `ca`
 *   is the certificate's PEM text, what a client must trust; remove() deletes the directory
 */
export async function selfSignedCertificate() {
  const dir = mkdtempSync(join(tmpdir(), 'lhttpd-tls-'));
  const certFile = join(dir, 'cert.pem');
  const keyFile = join(dir, 'key.pem');
  const remove = () => rmSync(dir, { recursive: true, force: true });
  const args = [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', keyFile, '-out', certFile,
  ];
  try {
    await promisify(execFile)('openssl', args);
  } catch (error) {
    remove();
    if (error.code === 'ENOENT') {
      throw new Error('the openssl command is missing: the TLS tests make their certificate with it (Debian package `openssl`; scripts/test installs it)');
    }
    throw new Error(`openssl could not make a test certificate: ${error.stderr || error.message}`);
  }
  return { certFile, keyFile, ca: readFileSync(certFile, 'utf8'), remove };
}

/**
 * An HTTPS request that trusts `ca` (fetch() in Node 20 cannot be given a CA).
 *
 * @returns {Promise<{status: number, body: string}>}
 */
export function httpsFetch(url, { ca, method = 'GET', body, timeout = 5000 } = {}) {
  return new Promise((resolveResponse, reject) => {
    const request = httpsRequest(url, { ca, method, timeout }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk) => (text += chunk));
      response.on('end', () => resolveResponse({ status: response.statusCode, body: text }));
      response.on('error', reject);
    });
    request.on('timeout', () => request.destroy(new Error(`no answer from ${url} within ${timeout} ms`)));
    request.on('error', reject);
    request.end(body);
  });
}

/**
 * Starts lhttpd on `port` (a free one by default) and waits until GET /healthz answers 200.
 * `config`: TOML text written to a temporary file and passed with `--config` (e.g. gateway
 * routes); the file is removed when the server stops.
 * `env` adds environment variables, e.g. configuration overrides `LHTTPD_AUTH__ANONYMOUS`.
 * `tls`: a certificate from selfSignedCertificate(); the main port then speaks wss:// and
 * https:// (a `[server.tls]` section is added to the config), and the URLs name `localhost`.
 *
 * @returns {Promise<{port: number, url: string, http: string, stop: () => Promise<void>, terminate: () => Promise<void>, output: () => string}>}
 *   `url` is the WebSocket URL, `http` the HTTP base URL; stop() kills the server (SIGKILL, like
 *   a crash) and waits for it to exit; terminate() stops it gracefully (SIGTERM)
 */
export async function startLhttpd({ port, timeout = 10000, config, env = {}, tls } = {}) {
  if (!existsSync(binary)) {
    throw new Error(`lhttpd not found at ${binary}: run \`cargo build --bin lhttpd\` or set LHTTPD_BIN`);
  }
  port ??= await freePort();
  const args = ['--listen', `127.0.0.1:${port}`];
  if (tls) {
    // TOML basic strings escape like JSON ones.
    const section = `[server.tls]\ncert_file = ${JSON.stringify(tls.certFile)}\nkey_file = ${JSON.stringify(tls.keyFile)}\n`;
    config = `${config ?? ''}\n${section}`;
  }
  let configDir;
  if (config !== undefined) {
    configDir = mkdtempSync(join(tmpdir(), 'lhttpd-test-'));
    writeFileSync(join(configDir, 'lhttpd.toml'), config);
    args.push('--config', join(configDir, 'lhttpd.toml'));
  }
  const child = spawn(binary, args, {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  running.add(child);
  let output = '';
  const collect = (chunk) => {
    output = (output + chunk).slice(-20000); // the tail is enough to explain a failure
  };
  child.stdout.on('data', collect);
  child.stderr.on('data', collect);
  const exited = new Promise((r) => child.once('exit', r));
  exited.then(() => {
    running.delete(child);
    if (configDir) rmSync(configDir, { recursive: true, force: true });
  });

  const http = tls ? `https://localhost:${port}` : `http://127.0.0.1:${port}`;
  const server = {
    port,
    http,
    url: tls ? `wss://localhost:${port}/` : `ws://127.0.0.1:${port}/`,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
    /** SIGTERM, as a service manager stops it (a graceful shutdown); waits for it to exit. */
    async terminate() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`lhttpd exited with ${child.exitCode}:\n${output}`);
        try {
          if (tls) return (await httpsFetch(`${http}/healthz`, { ca: tls.ca, timeout: 1000 })).status === 200;
          const response = await fetch(`${http}/healthz`, { signal: AbortSignal.timeout(1000) });
          return response.status === 200;
        } catch {
          return false; // not listening yet
        }
      },
      { timeout, what: `lhttpd on port ${port} to answer /healthz` },
    );
  } catch (error) {
    await server.stop();
    throw error;
  }
  return server;
}
