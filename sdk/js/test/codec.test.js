// Unit tests of the decoder, the encoder and the multipart helpers (no server needed).

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';

import { buildMultipart, decode, encode, LhttpDecodeError, Message, parseMultipart } from '../lhttp.js';

const bytes = (text) => new TextEncoder().encode(text);

describe('decode', () => {
  test('a header value is everything after the first colon, trimmed', () => {
    const message = decode('LHTTP/1.0 chat\r\nupstream: POST http://h:80/x?a=b \r\ntime:12:30:05\r\n\r\nhi');
    assert.equal(message.command, 'chat');
    assert.deepEqual(message.headers, [
      ['upstream', 'POST http://h:80/x?a=b'],
      ['time', '12:30:05'],
    ]);
    assert.equal(message.body, 'hi');
  });

  test('the body is everything after the first empty line, blank lines and colons included', () => {
    const message = decode('LHTTP/1.0 chat\r\npublish:room\r\n\r\nfirst\r\n\r\nk:v\r\n\r\nlast\r\n');
    assert.equal(message.body, 'first\r\n\r\nk:v\r\n\r\nlast\r\n');
    assert.equal(message.header('publish'), 'room');
    assert.equal(message.headers.length, 1);
  });

  test('bare LF line ends are accepted', () => {
    const message = decode('LHTTP/1.0 chat\npublish:room\nnick:ann\n\nline one\n\nline two');
    assert.deepEqual(message.headers, [['publish', 'room'], ['nick', 'ann']]);
    assert.equal(message.body, 'line one\n\nline two');
  });

  test('a message may end after its start line or after its headers', () => {
    assert.deepEqual(decode('LHTTP/1.0 ping'), new Message('ping', [], ''));
    assert.deepEqual(decode('LHTTP/1.0 ping\r\n'), new Message('ping', [], ''));
    assert.deepEqual(decode('LHTTP/1.0 c\r\nsubscribe:a\r\n'), new Message('c', [['subscribe', 'a']], ''));
    assert.deepEqual(decode('LHTTP/1.0 c\r\n\r\nbody'), new Message('c', [], 'body'));
  });

  test('header names are matched case-insensitively, empty values are kept', () => {
    const message = decode('LHTTP/1.0 chat\r\nRequest-ID:7\r\na:\r\nb:x\r\n\r\n');
    assert.equal(message.header('request-id'), '7');
    assert.equal(message.header('A'), '');
    assert.equal(message.header('b'), 'x');
    assert.equal(message.header('missing'), undefined);
  });

  test('binary frames: UTF-8 text by default, bytes on request, the body never scanned', () => {
    const frame = new Uint8Array([...bytes('LHTTP/1.0 blob\r\nnick:zoë\r\n\r\n'), 0xff, 0x0a, 0x0a, 0x00]);
    const asBytes = decode(frame.buffer, { binary: 'bytes' });
    assert.equal(asBytes.header('nick'), 'zoë');
    assert.deepEqual(asBytes.body, new Uint8Array([0xff, 0x0a, 0x0a, 0x00]));
    const asText = decode(bytes('LHTTP/1.0 t\r\n\r\nhé\n\nllo'));
    assert.equal(asText.body, 'hé\n\nllo');
  });

  test('rejects what is not an lhttp message', () => {
    for (const bad of ['', 'HTTP/1.1 200 OK\r\n\r\n', 'LHTTP/1.0\r\n\r\n', 'LHTTP/1.0 \r\n', 'LHTTP/1.0 c\r\nno colon\r\n\r\n']) {
      assert.throws(() => decode(bad), LhttpDecodeError, JSON.stringify(bad));
    }
  });
});

describe('encode', () => {
  test('writes name:value without a space and always the empty line', () => {
    const message = new Message('chat', [['publish', 'room'], ['nick', 'ann']], 'a\r\n\r\nb');
    assert.equal(encode(message), 'LHTTP/1.0 chat\r\npublish:room\r\nnick:ann\r\n\r\na\r\n\r\nb');
    assert.equal(encode({ command: 'ping' }), 'LHTTP/1.0 ping\r\n\r\n');
    assert.equal(encode({ command: 'c', headers: { a: 1, b: 'x:y' } }), 'LHTTP/1.0 c\r\na:1\r\nb:x:y\r\n\r\n');
  });

  test('a byte body makes a binary frame', () => {
    const frame = encode({ command: 'blob', headers: [['n', 'é']], body: new Uint8Array([0, 255]) });
    assert.deepEqual(frame, new Uint8Array([...bytes('LHTTP/1.0 blob\r\nn:é\r\n\r\n'), 0, 255]));
  });

  test('refuses header injection and invalid names', () => {
    assert.throws(() => encode({ command: 'chat', headers: { nick: 'eve\r\npublish:other' } }), TypeError);
    assert.throws(() => encode({ command: 'chat', headers: { 'a:b': 'x' } }), TypeError);
    assert.throws(() => encode({ command: 'two words' }), TypeError);
    assert.throws(() => encode({ command: '' }), TypeError);
  });

  test('decode(encode(m)) gives m back', () => {
    const message = new Message('chat', [['publish', 'a'], ['x', 'p:q r']], 'body\n\nwith: blank lines');
    assert.deepEqual(decode(encode(message)), message);
  });

  test('setHeader replaces in place, removeHeader removes every spelling', () => {
    const message = new Message('c', [['A', '1'], ['b', '2'], ['a', '3']]);
    message.setHeader('a', 'x');
    assert.deepEqual(message.headers, [['a', 'x'], ['b', '2']]);
    message.removeHeader('B');
    assert.deepEqual(message.headers, [['a', 'x']]);
  });
});

describe('multipart', () => {
  test('the original example: offsets 0 14', () => {
    const built = buildMultipart([
      { headers: { k1: 'v1' }, body: 'body1' },
      { headers: { k2: 'v2' }, body: 'body2' },
    ]);
    assert.equal(built.multipart, '0 14');
    assert.equal(built.body, 'k1:v1\r\n\r\nbody1k2:v2\r\n\r\nbody2');
  });

  test('offsets count UTF-8 bytes, not characters', () => {
    const built = buildMultipart([
      { headers: { name: 'ünïcödé' }, body: '€€' },
      { headers: [], body: 'x' },
    ]);
    // "name:ünïcödé\r\n\r\n€€": 5 + 11 + 4 + 6 = 26 bytes (but 20 characters).
    assert.deepEqual(built.offsets, [0, 26]);
    const parts = parseMultipart(built);
    assert.equal(parts[0].header('NAME'), 'ünïcödé');
    assert.equal(parts[0].body, '€€');
    assert.deepEqual(parts[1].headers, []);
    assert.equal(parts[1].body, 'x');
  });

  test('byte bodies stay bytes', () => {
    const built = buildMultipart([{ headers: { t: 'a' }, body: new Uint8Array([1, 2, 13, 10]) }, { body: 'z' }]);
    assert.ok(built.body instanceof Uint8Array);
    const parts = parseMultipart(new Message('up', [['multipart', built.multipart]], built.body));
    assert.deepEqual(parts[0].body, new Uint8Array([1, 2, 13, 10]));
    assert.deepEqual(parts[1].body, bytes('z'));
  });

  test('parts with blank lines in their bodies', () => {
    const parts = parseMultipart({ multipart: '0 13', body: 'k1:v1\r\n\r\nb\n\ndk2:v2\n\nbody2' });
    assert.deepEqual(parts.map((p) => [p.headers, p.body]), [
      [[['k1', 'v1']], 'b\n\nd'],
      [[['k2', 'v2']], 'body2'],
    ]);
  });

  test('rejects offsets that do not describe the body and parts without an empty line', () => {
    assert.throws(() => parseMultipart({ multipart: '0 99', body: 'k:v\r\n\r\n' }), LhttpDecodeError);
    assert.throws(() => parseMultipart({ multipart: '5 2', body: 'k:v\r\n\r\nabcdef' }), LhttpDecodeError);
    assert.throws(() => parseMultipart({ multipart: '0', body: 'k:v\r\nno empty line' }), LhttpDecodeError);
  });
});
