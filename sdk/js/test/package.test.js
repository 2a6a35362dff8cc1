// The SDK as people install it: `npm pack` makes the tarball, an empty project installs it
// (with its one dependency, `ws`), and a program there imports the package by its name and
// chats through a real lhttpd. The tarball holds what the package page promises.

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { test } from 'node:test';
import { promisify } from 'node:util';

import { repoRoot, startLhttpd } from './lhttpd.js';

const run = promisify(execFile);
const sdk = resolve(repoRoot, 'sdk/js');

test('the packed SDK installs into an empty project and works by its package name', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'lhttp-sdk-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const { stdout } = await run('npm', ['pack', '--json', '--pack-destination', dir], { cwd: sdk });
  const [packed] = JSON.parse(stdout);
  const pkg = JSON.parse(readFileSync(join(sdk, 'package.json'), 'utf8'));
  assert.equal(packed.name, pkg.name);
  assert.notEqual(pkg.name, 'lhttp', 'the npm name lhttp belongs to another package');
  const files = packed.files.map((f) => f.path).sort();
  assert.deepEqual(files, ['LICENSE', 'README.md', 'lhttp.d.ts', 'lhttp.js', 'package.json']);

  const project = join(dir, 'app');
  await run('mkdir', ['-p', project]);
  writeFileSync(join(project, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  await run('npm', ['install', '--no-audit', '--no-fund', '--prefer-offline', join(dir, packed.filename)], {
    cwd: project,
    timeout: 120000,
  });
  const server = await startLhttpd();
  t.after(() => server.stop());
  writeFileSync(
    join(project, 'main.js'),
    `import { connect } from '${pkg.name}';
     const client = await connect(process.argv[2]);
     let done;
     const got = new Promise((resolveGot) => { done = resolveGot; });
     await client.subscribe('pkg', (message) => done(message.text));
     client.publish('pkg', 'installed');
     console.log(await got);
     await client.close();`,
  );
  const program = await run('node', ['main.js', server.url], { cwd: project, timeout: 30000 });
  assert.equal(program.stdout.trim(), 'installed');
});
