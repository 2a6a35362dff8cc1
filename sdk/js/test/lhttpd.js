// Test helper: runs a real lhttpd as a child process on a free loopback port.
//
// The binary comes from $LHTTPD_BIN, or target/debug/lhttpd of the repository (build it with
// `cargo build --bin lhttpd`). Every process started here is killed when the test process exits,
// even after a failed assertion, so no server outlives the test run.

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

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
 * Starts lhttpd on `port` (a free one by default) and waits until GET /healthz answers 200.
 * `config`: TOML text written to a temporary file and passed with `--config` (e.g. gateway
 * routes); the file is removed when the server stops.
 * `env` adds environment variables, e.g. configuration overrides `LHTTPD_AUTH__ANONYMOUS`.
 *
 * @returns {Promise<{port: number, url: string, http: string, stop: () => Promise<void>, output: () => string}>}
 *   `url` is the WebSocket URL, `http` the HTTP base URL; stop() kills the server (SIGKILL, like
 *   a crash) and waits for it to exit
 */
export async function startLhttpd({ port, timeout = 10000, config, env = {} } = {}) {
  if (!existsSync(binary)) {
    throw new Error(`lhttpd not found at ${binary}: run \`cargo build --bin lhttpd\` or set LHTTPD_BIN`);
  }
  port ??= await freePort();
  const args = ['--listen', `127.0.0.1:${port}`];
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

  const http = `http://127.0.0.1:${port}`;
  const server = {
    port,
    http,
    url: `ws://127.0.0.1:${port}/`,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
  try {
    await waitFor(
      async () => {
        if (child.exitCode !== null) throw new Error(`lhttpd exited with ${child.exitCode}:\n${output}`);
        try {
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
