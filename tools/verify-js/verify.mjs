#!/usr/bin/env node
// An independent verifier of flow8 audit exports, in plain Node.js (no dependencies): it shares
// no code with flow8, only the definitions of schemas/hashing.md.
//
//   node tools/verify-js/verify.mjs ARCHIVE.jsonl.gz [--public-key audit-signing.pub] [--require-anchor]
//
// Prints one JSON object per play, then a summary with "verdict": "ok" | "findings", like
// `flow8 audit verify --archive ARCHIVE --json`. Exit 0 clean, 1 findings, 2 bad input.
// It checks events with hash_version 2 (RFC 8785); hash_version 1 (Python's json.dumps form,
// which JSON.parse cannot reproduce: it loses 1.0 versus 1) is reported, not checked.

import crypto from "node:crypto";
import fs from "node:fs";
import readline from "node:readline";
import zlib from "node:zlib";

const GENESIS = "0".repeat(64);
const TERMINAL = new Set(["PlayCompleted", "PlayFailed", "PlayCancelled"]);
const MAX_LINE = 16 * 1024 * 1024;

function usage(message) {
  process.stderr.write(`error: ${message}\n`);
  process.exit(2);
}

// RFC 8785: JSON.stringify already writes strings and numbers as the RFC says; members are
// sorted by UTF-16 code units, which is what Array.prototype.sort compares.
function jcs(value) {
  if (value === null || typeof value !== "object") return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(jcs).join(",")}]`;
  const keys = Object.keys(value).sort();
  return `{${keys.map((k) => `${JSON.stringify(k)}:${jcs(value[k])}`).join(",")}}`;
}

const sha256 = (...parts) => {
  const h = crypto.createHash("sha256");
  for (const p of parts) h.update(p);
  return h.digest("hex");
};

function parseArgs(argv) {
  const opts = { archive: null, publicKey: null, requireAnchor: false };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === "--public-key") opts.publicKey = argv[++i];
    else if (a === "--require-anchor") opts.requireAnchor = true;
    else if (a.startsWith("--")) usage(`unknown option ${a}`);
    else if (opts.archive === null) opts.archive = a;
    else usage(`unexpected argument ${a}`);
  }
  if (!opts.archive) usage("give the archive to verify (flow8 audit export --out FILE.jsonl.gz)");
  if (opts.requireAnchor && !opts.publicKey) usage("--require-anchor needs --public-key FILE");
  return opts;
}

function loadKey(path) {
  try {
    const key = crypto.createPublicKey(fs.readFileSync(path));
    if (key.asymmetricKeyType !== "ed25519") usage(`--public-key ${path} is not an Ed25519 public key`);
    return key;
  } catch (err) {
    if (err && err.code === "ENOENT") usage(`--public-key ${path} does not exist`);
    usage(`--public-key ${path} is not a PEM public key`);
  }
}

function keyId(key) {
  const raw = key.export({ format: "der", type: "spki" }).subarray(-32);
  return sha256(raw).slice(0, 16);
}

async function* lines(path) {
  const fd = fs.openSync(path, "r");
  const magic = Buffer.alloc(2);
  fs.readSync(fd, magic, 0, 2, 0);
  fs.closeSync(fd);
  let stream = fs.createReadStream(path);
  if (magic[0] === 0x1f && magic[1] === 0x8b) stream = stream.pipe(zlib.createGunzip());
  const rl = readline.createInterface({ input: stream, crlfDelay: Infinity });
  let n = 0;
  for await (const line of rl) {
    n++;
    if (line.trim()) yield [n, line];
  }
}

function checkCheckpoints(records, key) {
  const findings = [];
  const seen = new Map();
  const want = keyId(key);
  for (const { n, body, signature } of records) {
    const who = `checkpoint ${JSON.stringify(body.number)} of ${JSON.stringify(body.company_id)}`;
    let ok = false;
    try {
      ok = crypto.verify(null, Buffer.from(jcs(body)), key, Buffer.from(signature, "base64"));
    } catch {
      ok = false;
    }
    if (!ok) {
      const hint = body.key_id !== want ? ` (it names key ${body.key_id}, yours is ${want})` : "";
      findings.push({ kind: "checkpoint_forged", seq: null, detail: `${who}: its signature does not verify${hint}` });
      continue;
    }
    if (body.format !== "flow8-checkpoint" || body.version !== 1) {
      findings.push({ kind: "checkpoint_forged", seq: null, detail: `${who}: unknown format (line ${n})` });
      continue;
    }
    const id = `${body.company_id}\u0000${String(body.number).padStart(20, "0")}`;
    if (!seen.has(id)) seen.set(id, body);
  }
  const heads = new Map();
  const companies = new Map();
  const previous = new Map();
  for (const id of [...seen.keys()].sort()) {
    const c = seen.get(id);
    const before = previous.get(c.company_id);
    if (before && (before.number !== c.number - 1 || c.previous !== before.hash)) {
      findings.push({
        kind: "checkpoint_forged",
        seq: null,
        detail: `checkpoint ${c.number} of ${c.company_id} does not follow checkpoint ${before.number}`,
      });
    }
    previous.set(c.company_id, { number: c.number, hash: sha256(jcs(c)) });
    for (const h of c.heads || []) {
      if (!heads.has(h.play_id)) heads.set(h.play_id, []);
      heads.get(h.play_id).push({ lastSeq: h.last_seq, headHash: h.head_hash, source: `checkpoint ${c.number}` });
      companies.set(h.play_id, c.company_id);
    }
  }
  return { heads, companies, findings, count: seen.size };
}

function sequenceFinding(docs, i, seq) {
  const expected = i + 1;
  if (!Number.isInteger(seq)) return { kind: "altered", seq: expected, detail: `no valid seq at position ${expected}` };
  if (i > 0 && seq === docs[i - 1].seq) return { kind: "duplicated", seq, detail: `seq ${seq} appears twice` };
  const later = new Set(docs.slice(i + 1).map((d) => d.seq));
  if (seq > expected && !later.has(expected)) {
    return { kind: "missing", seq: expected, detail: `seq ${expected} is missing` };
  }
  return { kind: "reordered", seq: expected, detail: `seq ${seq} stands where seq ${expected} belongs` };
}

function verifyPlay(playId, companyId, docs, anchors, checked, requireAnchor) {
  const findings = [];
  const hashes = [];
  let previous = GENESIS;
  let chainOk = true;
  for (let i = 0; i < docs.length; i++) {
    const doc = docs[i];
    if (doc.seq !== i + 1) {
      findings.push(sequenceFinding(docs, i, doc.seq));
      chainOk = false;
      break;
    }
    if (doc.play_id !== playId || doc.company_id !== companyId) {
      findings.push({ kind: "altered", seq: doc.seq, detail: `seq ${doc.seq} names another play or company` });
      chainOk = false;
      break;
    }
    const version = doc.hash_version === undefined ? 1 : doc.hash_version;
    if (version !== 2) {
      findings.push({ kind: "unknown_hash_version", seq: doc.seq, detail: `hash_version ${version} is not checked here` });
      chainOk = false;
      break;
    }
    const { hash, ...body } = doc;
    let expected;
    try {
      expected = sha256(Buffer.from(previous, "hex"), Buffer.from(jcs(body)));
    } catch (err) {
      findings.push({ kind: "altered", seq: doc.seq, detail: `seq ${doc.seq} cannot be hashed: ${err.message}` });
      chainOk = false;
      break;
    }
    if (hash !== expected) {
      findings.push({ kind: "altered", seq: doc.seq, detail: `seq ${doc.seq}: its content does not match its hash` });
      chainOk = false;
      break;
    }
    if (i > 0 && TERMINAL.has(docs[i - 1].type)) {
      findings.push({ kind: "after_terminal", seq: doc.seq, detail: `seq ${doc.seq} follows the terminal event` });
      chainOk = false;
      break;
    }
    hashes.push(expected);
    previous = expected;
  }
  let anchored = null;
  let unanchored = false;
  if (checked) {
    anchored = false;
    let anchorFinding = null;
    for (const a of [...anchors].sort((x, y) => x.lastSeq - y.lastSeq)) {
      if (a.lastSeq <= hashes.length) {
        if (hashes[a.lastSeq - 1] !== a.headHash) {
          anchorFinding = { kind: "rewritten", seq: a.lastSeq, detail: `seq ${a.lastSeq} differs from ${a.source}` };
          break;
        }
      } else if (chainOk) {
        anchorFinding = { kind: "cut_tail", seq: docs.length + 1, detail: `${a.source} signed seq ${a.lastSeq}` };
        break;
      }
    }
    if (anchorFinding) findings.push(anchorFinding);
    else {
      const head = Math.max(0, ...anchors.map((a) => a.lastSeq));
      anchored = chainOk && head === docs.length && docs.length > 0;
      if (chainOk && !anchored) {
        unanchored = true;
        if (requireAnchor) {
          findings.push({ kind: "unanchored", seq: head + 1, detail: `no signed checkpoint covers seq ${head + 1}` });
        }
      }
    }
  }
  const last = docs.length ? docs[docs.length - 1].type : null;
  const status = { PlayCompleted: "succeeded", PlayFailed: "failed", PlayCancelled: "cancelled" }[last] || "running";
  return {
    play_id: playId,
    company_id: companyId,
    flow_id: docs.length ? docs[0].flow_id : null,
    status,
    events: docs.length,
    last_seq: hashes.length,
    head_hash: hashes.length ? hashes[hashes.length - 1] : null,
    anchored,
    unanchored,
    verdict: findings.length ? "findings" : "ok",
    findings,
  };
}

async function main() {
  const opts = parseArgs(process.argv.slice(2));
  if (!fs.existsSync(opts.archive)) usage(`no archive at ${opts.archive}`);
  const key = opts.publicKey ? loadKey(opts.publicKey) : null;
  const summary = { plays: 0, events: 0, ok: 0, with_findings: 0, unanchored: 0, byKind: {}, findings: [] };
  const note = (f) => {
    summary.findings.push(f);
    summary.byKind[f.kind] = (summary.byKind[f.kind] || 0) + 1;
  };
  const checkpoints = [];
  let anchors = null;
  let current = null;
  const done = new Set();
  const seenPlays = new Set();
  const finish = (play) => {
    const v = verifyPlay(play.id, play.company, play.docs, anchors ? anchors.heads.get(play.id) || [] : [], !!anchors, opts.requireAnchor);
    seenPlays.add(play.id);
    summary.plays++;
    summary.events += v.events;
    if (v.unanchored) summary.unanchored++;
    if (v.findings.length) summary.with_findings++;
    else summary.ok++;
    for (const f of v.findings) summary.byKind[f.kind] = (summary.byKind[f.kind] || 0) + 1;
    process.stdout.write(`${JSON.stringify(v)}\n`);
  };
  let header = null;
  try {
    for await (const [n, line] of lines(opts.archive)) {
      let record;
      try {
        if (line.length > MAX_LINE) throw new Error(`over ${MAX_LINE} bytes`);
        record = JSON.parse(line);
        if (record === null || typeof record !== "object" || Array.isArray(record)) throw new Error("not an object");
      } catch (err) {
        note({ kind: "undecodable", seq: null, detail: `line ${n}: ${err.message}` });
        continue;
      }
      if (record.header) {
        header = record.header;
        if (header.format !== "flow8-audit-export") usage(`${opts.archive} is not a flow8 audit export`);
        continue;
      }
      if (record.checkpoint && current === null) {
        checkpoints.push({ n, body: record.checkpoint, signature: String(record.signature) });
        continue;
      }
      const doc = record.event;
      if (!doc || typeof doc !== "object" || typeof doc.play_id !== "string") {
        note({ kind: "undecodable", seq: null, detail: `line ${n}: not an event` });
        continue;
      }
      if (anchors === null && key) {
        anchors = checkCheckpoints(checkpoints, key);
        for (const f of anchors.findings) note(f);
      }
      if (!current || current.id !== doc.play_id) {
        if (current) {
          done.add(current.id);
          finish(current);
        }
        if (done.has(doc.play_id)) note({ kind: "reordered", seq: null, detail: `line ${n}: play ${doc.play_id} again` });
        current = { id: doc.play_id, company: String(doc.company_id), docs: [] };
      }
      current.docs.push(doc);
    }
  } catch (err) {
    usage(`${opts.archive} cannot be read as an archive: ${err.message}`);
  }
  if (header === null) usage(`${opts.archive} has no flow8 audit export header`);
  if (anchors === null && key) {
    anchors = checkCheckpoints(checkpoints, key);
    for (const f of anchors.findings) note(f);
  }
  if (current) finish(current);
  if (anchors) {
    for (const [playId, company] of [...anchors.companies.entries()].sort()) {
      if (!seenPlays.has(playId)) {
        note({ kind: "missing", seq: 1, detail: `play ${playId} of ${company} is named by a signed checkpoint but absent` });
      }
    }
  }
  const clean = summary.with_findings === 0 && summary.findings.length === 0;
  const byKind = Object.fromEntries(Object.entries(summary.byKind).sort());
  process.stdout.write(
    `${JSON.stringify({
      summary: true,
      plays: summary.plays,
      events: summary.events,
      ok: summary.ok,
      with_findings: summary.with_findings,
      unanchored: summary.unanchored,
      checkpoints: anchors ? anchors.count : 0,
      findings_by_kind: byKind,
      findings: summary.findings,
      verdict: clean ? "ok" : "findings",
    })}\n`,
  );
  process.exit(clean ? 0 : 1);
}

main();
