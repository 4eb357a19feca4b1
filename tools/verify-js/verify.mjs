#!/usr/bin/env node
// Independent verifier for LogLine spans: RFC 8785 (canonicalize) + BLAKE3 (@noble/hashes) +
// Ed25519 (@noble/curves). It shares no code with the Python implementation; it follows
// docs/canonical-form.md only.
//
//   node verify.mjs [FILE...]          verify NDJSON spans (no FILE or "-": standard input)
//   node verify.mjs --vectors FILE     check tests/vectors/vectors.json byte for byte
//   node verify.mjs --prompts FILE     check tests/vectors/prompts.json (the prompt build)
//
// Prints one line per span ("ok" or "FAIL" with a reason code) and a summary on stderr.
// Exit status: 0 every span verifies, 1 at least one fails, 2 usage or unreadable input.

import { readFileSync } from 'node:fs';
import canonicalize from 'canonicalize';
import { blake3 } from '@noble/hashes/blake3.js';
import { bytesToHex, hexToBytes } from '@noble/hashes/utils.js';
import { ed25519 } from '@noble/curves/ed25519.js';

// Every column of a span (docs/canonical-form.md, "Fields").
const FIELDS = new Set([
  'id', 'seq', 'entity_type', 'who', 'did', 'this', 'at', 'parent_id', 'related_to',
  'owner_id', 'tenant_id', 'visibility', 'status', 'is_deleted', 'name', 'description', 'code',
  'language', 'runtime', 'input', 'output', 'error', 'duration_ms', 'trace_id', 'prev_hash',
  'curr_hash', 'signature', 'public_key', 'metadata', 'content',
]);
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const HEX = (n) => new RegExp(`^[0-9a-f]{${n}}$`);
const AT = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

class Failure extends Error {
  constructor(code, detail) {
    super(detail);
    this.code = code;
  }
}

// A span that is not in normal form would hash differently in another implementation:
// refuse it rather than guess how it was meant to be normalised.
function checkNormalForm(span) {
  const bad = (detail) => { throw new Failure('NOT_NORMALISED', detail); };
  if (span === null || typeof span !== 'object' || Array.isArray(span)) bad('not a JSON object');
  for (const key of Object.keys(span)) if (!FIELDS.has(key)) bad(`unknown field ${key}`);
  for (const key of ['id', 'entity_type', 'who', 'this', 'at', 'seq', 'visibility',
    'is_deleted']) {
    if (span[key] === undefined || span[key] === null) bad(`${key} is missing`);
  }
  if (!UUID.test(span.id)) bad('id is not a lowercase 8-4-4-4-12 UUID');
  if (span.parent_id != null && !UUID.test(span.parent_id)) bad('parent_id is not a lowercase UUID');
  if (span.related_to != null
      && !(Array.isArray(span.related_to) && span.related_to.every((u) => UUID.test(u)))) {
    bad('related_to is not a list of lowercase UUIDs');
  }
  if (!Number.isInteger(span.seq) || span.seq < 0) bad('seq is not a non-negative integer');
  if (!['private', 'tenant', 'public'].includes(span.visibility)) bad('bad visibility');
  if (typeof span.is_deleted !== 'boolean') bad('is_deleted is not a boolean');
  if (typeof span.at !== 'string' || !AT.test(span.at)
      || new Date(span.at).toISOString() !== span.at) {
    bad(`at ${JSON.stringify(span.at)} is not rendered like Date.toISOString()`);
  }
  if ((span.seq === 0) !== (span.prev_hash == null)) bad('seq 0 has no prev_hash, later seqs do');
  for (const [key, n] of [['prev_hash', 64], ['curr_hash', 64], ['signature', 128],
    ['public_key', 64]]) {
    if (span[key] != null && !HEX(n).test(span[key])) bad(`${key} is not ${n} lowercase hex`);
  }
}

// The bytes the hash covers: RFC 8785 of the span without curr_hash, signature and nulls.
function canonicalBytes(span) {
  const view = Object.fromEntries(Object.entries(span).filter(
    ([key, value]) => value !== null && key !== 'curr_hash' && key !== 'signature'));
  return new TextEncoder().encode(canonicalize(view));
}

function verifySpan(span) {
  checkNormalForm(span);
  for (const key of ['curr_hash', 'signature', 'public_key']) {
    if (span[key] == null) throw new Failure('UNSIGNED', `span has no ${key}`);
  }
  const digest = blake3(canonicalBytes(span));
  if (bytesToHex(digest) !== span.curr_hash) {
    throw new Failure('HASH_MISMATCH',
      `content hashes to ${bytesToHex(digest)}, curr_hash is ${span.curr_hash}`);
  }
  let ok = false;
  try {
    ok = ed25519.verify(hexToBytes(span.signature), digest, hexToBytes(span.public_key),
      { zip215: false });
  } catch (err) {
    throw new Failure('SIGNATURE_INVALID', `cannot verify: ${err.message}`);
  }
  if (!ok) throw new Failure('SIGNATURE_INVALID', `signature does not verify under ${span.public_key}`);
  return digest;
}

function readInput(name) {
  try {
    return readFileSync(name === '-' ? 0 : name, 'utf8');
  } catch (err) {
    process.stderr.write(`${name}: cannot read: ${err.message}\n`);
    process.exit(2);
  }
}

function label(span) {
  if (!span || typeof span !== 'object') return '?';
  return `${span.id ?? '?'} seq ${span.seq ?? '?'}`;
}

function verifyNdjson(names) {
  let ok = 0;
  let failed = 0;
  for (const name of names.length ? names : ['-']) {
    const where = name === '-' ? '<stdin>' : name;
    readInput(name).split('\n').forEach((line, i) => {
      if (!line.trim()) return;
      let span;
      try {
        span = JSON.parse(line);
        verifySpan(span);
        ok += 1;
        console.log(`ok   ${where}:${i + 1} ${label(span)}`);
      } catch (err) {
        failed += 1;
        const code = err instanceof Failure ? err.code : 'BAD_JSON';
        console.log(`FAIL ${where}:${i + 1} ${label(span)} ${code}: ${err.message}`);
      }
    });
  }
  process.stderr.write(`${ok + failed} spans: ${ok} verified, ${failed} failed\n`);
  return failed ? 1 : 0;
}

// vectors.json: each vector's signed span must re-derive exactly the published canonical
// text, hash and signature, and signing with the published seed must give that signature.
function verifyVectors(name) {
  const doc = JSON.parse(readInput(name));
  const seed = hexToBytes(doc.seed_hex);
  if (bytesToHex(ed25519.getPublicKey(seed)) !== doc.public_key) {
    console.log(`FAIL seed: public key of seed_hex is not ${doc.public_key}`);
    return 1;
  }
  let failed = 0;
  for (const v of doc.vectors) {
    const span = { ...v.normalised, public_key: v.public_key, curr_hash: v.curr_hash,
      signature: v.signature };
    const problems = [];
    const text = new TextDecoder().decode(canonicalBytes(span));
    if (text !== v.canonical) problems.push(`canonical differs: ${text}`);
    try {
      const digest = verifySpan(span);
      if (bytesToHex(ed25519.sign(digest, seed)) !== v.signature) {
        problems.push('signing with seed_hex gives another signature');
      }
    } catch (err) {
      problems.push(`${err.code ?? 'ERROR'}: ${err.message}`);
    }
    if (problems.length) failed += 1;
    console.log(problems.length ? `FAIL ${v.name} ${problems.join('; ')}` : `ok   ${v.name}`);
  }
  process.stderr.write(`${doc.vectors.length} vectors: ${doc.vectors.length - failed} `
    + `verified, ${failed} failed\n`);
  return failed ? 1 : 0;
}

// prompts.json: the prompt build (docs/prompts.md), reimplemented from its description:
// blocks by priority, highest first (a tie keeps the given order), joined with a blank line,
// each `{{ name }}` replaced in one pass; compiled_hash = BLAKE3 of the UTF-8 bytes.
const VAR_NAME = /^[A-Za-z_][A-Za-z0-9_]{0,63}$/;

function compilePrompt(blocks, vars) {
  const order = blocks.map((b, i) => [b, i])
    .sort(([a, i], [b, j]) => (b.priority - a.priority) || (i - j));
  const parts = [];
  for (const [block] of order) {
    const where = `block ${block.id}`;
    const text = block.content;
    let out = '';
    let i = 0;
    for (;;) {
      const j = text.indexOf('{{', i);
      if (j < 0) { out += text.slice(i); break; }
      const k = text.indexOf('}}', j + 2);
      if (k < 0) return { error: { code: 'PROMPT_TEMPLATE_INVALID', where } };
      const name = text.slice(j + 2, k).trim();
      if (!VAR_NAME.test(name)) return { error: { code: 'PROMPT_TEMPLATE_INVALID', where } };
      if (!Object.hasOwn(vars, name) || vars[name] === null) {
        return { error: { code: 'PROMPT_VARIABLE_MISSING', where: `${where}: {{${name}}}` } };
      }
      out += text.slice(i, j) + vars[name];
      i = k + 2;
    }
    parts.push(out);
  }
  return { compiled: parts.join('\n\n') };
}

function verifyPromptVectors(name) {
  const doc = JSON.parse(readInput(name));
  let failed = 0;
  for (const v of doc.vectors) {
    const got = compilePrompt(v.blocks, v.vars);
    const problems = [];
    if (v.error) {
      if (!got.error || got.error.code !== v.error.code || got.error.where !== v.error.where) {
        problems.push(`expected ${v.error.code} at ${v.error.where}, got ${JSON.stringify(got)}`);
      }
    } else if (got.error) {
      problems.push(`refused with ${got.error.code} at ${got.error.where}`);
    } else {
      if (got.compiled !== v.compiled) problems.push(`compiled differs: ${JSON.stringify(got.compiled)}`);
      const hash = bytesToHex(blake3(new TextEncoder().encode(got.compiled)));
      if (hash !== v.compiled_hash) problems.push(`compiled_hash ${hash} != ${v.compiled_hash}`);
    }
    if (problems.length) failed += 1;
    console.log(problems.length ? `FAIL ${v.name} ${problems.join('; ')}` : `ok   ${v.name}`);
  }
  process.stderr.write(`${doc.vectors.length} prompt vectors: ${doc.vectors.length - failed} `
    + `verified, ${failed} failed\n`);
  return failed ? 1 : 0;
}

const args = process.argv.slice(2);
if (args.includes('-h') || args.includes('--help')) {
  console.log('usage: node verify.mjs [FILE...] | node verify.mjs --vectors FILE'
    + ' | node verify.mjs --prompts FILE');
  process.exit(0);
}
if (args[0] === '--vectors') {
  if (args.length !== 2) {
    process.stderr.write('usage: node verify.mjs --vectors FILE\n');
    process.exit(2);
  }
  process.exit(verifyVectors(args[1]));
}
if (args[0] === '--prompts') {
  if (args.length !== 2) {
    process.stderr.write('usage: node verify.mjs --prompts FILE\n');
    process.exit(2);
  }
  process.exit(verifyPromptVectors(args[1]));
}
process.exit(verifyNdjson(args));
