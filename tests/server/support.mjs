// Shared helpers of the `dsv4 serve` end-to-end tests: start and stop a server, raw HTTP / SSE helpers,
// SDK clients, metrics parsing and the DeepSeek-V4 raw-output snippets that the scripted completion hook
// (--test-hooks, body field "dsv4_test") plays back.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { before, after, test } from 'node:test';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';

const here = path.dirname(fileURLToPath(import.meta.url));
export const repoRoot = path.resolve(here, '..', '..');
export const DSV4_BIN = path.resolve(process.env.DSV4_BIN || path.join(repoRoot, 'build/test/tools/dsv4'));
// Where each server's stderr is written in full (the tail is also printed with a failing test).
const logDir = process.env.DSV4_TEST_LOG_DIR || mkdtempSync(path.join(os.tmpdir(), 'dsv4-serve-test-'));

export const EOS = '<｜end▁of▁sentence｜>';
export const MODEL_NAME = 'sotu-v4-tiny';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------------------------------------
// Server process

let serverCount = 0;

// Starts `dsv4 serve --host 127.0.0.1 --port 0 ...args`, parses the port from stderr and waits for
// GET /health == 200. Returns { baseURL, port, proc, stderr(), stderrTail(), stop(), alive() }.
export async function startServer({ args = [], hooks = false, readyTimeoutMs = 120_000, name = 'server' } = {}) {
  if (!existsSync(DSV4_BIN)) throw new Error(`dsv4 binary not found: ${DSV4_BIN} (set DSV4_BIN)`);
  const argv = ['serve', '--host', '127.0.0.1', '--port', '0', ...(hooks ? ['--test-hooks'] : []), ...args];
  const id = ++serverCount;
  const logFile = path.join(logDir, `${path.basename(process.argv[1] || 'test', '.mjs')}-${id}-${name}.stderr.log`);
  const proc = spawn(DSV4_BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  let err = '';
  let out = '';
  let exited = null;
  proc.stderr.setEncoding('utf8');
  proc.stdout.setEncoding('utf8');
  proc.stderr.on('data', (d) => { err += d; });
  proc.stdout.on('data', (d) => { out += d; });
  const exitPromise = new Promise((resolve) => {
    proc.on('exit', (code, signal) => { exited = { code, signal }; resolve(exited); });
    proc.on('error', (e) => { exited = { code: null, signal: null, error: e }; resolve(exited); });
  });
  const server = {
    proc,
    argv,
    logFile,
    baseURL: null,
    port: null,
    stderr: () => err,
    stdout: () => out,
    stderrTail: (n = 6000) => (err.length > n ? '...' + err.slice(-n) : err),
    alive: () => exited === null,
    exitInfo: () => exited,
    exited: exitPromise,
    url: (p) => server.baseURL + p,
    async stop() {
      if (exited === null) {
        proc.kill('SIGTERM');
        const t = setTimeout(() => { if (exited === null) { server.killedHard = true; proc.kill('SIGKILL'); } }, 5000);
        await exitPromise;
        clearTimeout(t);
      }
      try { writeFileSync(logFile, `$ ${DSV4_BIN} ${argv.join(' ')}\n${err}\n--- stdout ---\n${out}`); } catch { /* */ }
      return exited;
    },
  };
  const describe = () => `${DSV4_BIN} ${argv.join(' ')}\n--- server stderr ---\n${server.stderrTail()}`;

  // The port from "dsv4 serve: listening on http://HOST:PORT".
  const deadline = Date.now() + readyTimeoutMs;
  const re = /dsv4 serve: listening on http:\/\/(\[[^\]]+\]|[^\s:/]+):(\d+)/;
  while (true) {
    const m = re.exec(err);
    if (m) {
      server.port = Number(m[2]);
      server.baseURL = `http://127.0.0.1:${server.port}`;
      break;
    }
    if (exited !== null) throw new Error(`server exited before listening (${JSON.stringify(exited)})\n${describe()}`);
    if (Date.now() > deadline) { await server.stop(); throw new Error(`no "listening on" line on stderr\n${describe()}`); }
    await sleep(20);
  }
  // Then /health: 503 {"status":"loading"} while the model loads, 200 {"status":"ok"} when ready.
  server.healthSeen = [];
  while (true) {
    if (exited !== null) throw new Error(`server exited while loading (${JSON.stringify(exited)})\n${describe()}`);
    try {
      // node:http without an agent: a fresh connection each time (Connection: close), so that polling
      // leaves no keep-alive connection behind.
      const r = await rawHttp(server.port, { method: 'GET', path: '/health', timeoutMs: 5000 });
      server.healthSeen.push([r.status, r.text]);
      if (r.status === 200) break;
    } catch (e) {
      server.healthSeen.push([0, String(e)]);
    }
    if (Date.now() > deadline) { await server.stop(); throw new Error(`/health never returned 200\n${describe()}`); }
    await sleep(50);
  }
  return server;
}

// Registers before/after hooks that start/stop one server for the current test file (or describe block).
// Returns a handle whose fields are filled in by `before`: handle.server, handle.baseURL, handle.openai,
// handle.anthropic; handle.test(name, [opts], fn) is node:test's `test` that adds the server's stderr tail to
// a failure (and checks the server is still alive after the test).
export function useServer(opts = {}) {
  const h = {
    server: null,
    baseURL: null,
    openai: null,
    anthropic: null,
    url: (p) => h.server.url(p),
    test(name, o, fn) {
      if (typeof o === 'function') { fn = o; o = {}; }
      const { allowExit = false, ...testOpts } = o;
      if (allowExit) h.exitAllowed = true;
      return test(name, testOpts, async (t) => {
        try {
          await fn(t);
        } catch (e) {
          attachLog(e, h.server);
          throw e;
        }
        if (h.server && !allowExit && !h.server.alive()) {
          const e = new Error(`server died during the test: ${JSON.stringify(h.server.exitInfo())}`);
          attachLog(e, h.server);
          throw e;
        }
      });
    },
  };
  before(async () => {
    h.server = await startServer(opts);
    h.baseURL = h.server.baseURL;
    h.openai = openaiClient(h.baseURL, opts.apiKey);
    h.anthropic = anthropicClient(h.baseURL, opts.apiKey);
  });
  after(async () => {
    if (!h.server) return;
    const wasAlive = h.server.alive();
    const info = await h.server.stop();
    if (!wasAlive && !h.exitAllowed) {
      process.stderr.write(`server had died: ${JSON.stringify(info)}\n${h.server.stderrTail()}\n`);
    } else if (wasAlive && h.server.killedHard) {
      process.stderr.write(`note: server did not exit within 5 s of SIGTERM (killed); log: ${h.server.logFile}\n`);
    }
  });
  return h;
}

function attachLog(e, server) {
  if (!server || !e || typeof e !== 'object') return;
  const tail = `\n--- dsv4 serve stderr (tail; full log ${server.logFile}) ---\n${server.stderrTail()}\n--- end of stderr ---`;
  try {
    if (typeof e.stack === 'string') e.stack += tail;
    else e.message += tail;
  } catch {
    process.stderr.write(`[${server.logFile}]${tail}\n`);
  }
}

// ---------------------------------------------------------------------------------------------------------
// SDK clients

export function openaiClient(baseURL, apiKey = 'sk-test', extra = {}) {
  return new OpenAI({ baseURL: `${baseURL}/v1`, apiKey: apiKey || 'sk-test', maxRetries: 0, timeout: 120_000, ...extra });
}

export function anthropicClient(baseURL, apiKey = 'sk-ant-test', extra = {}) {
  return new Anthropic({ baseURL, apiKey: apiKey || 'sk-ant-test', maxRetries: 0, timeout: 120_000, ...extra });
}

// ---------------------------------------------------------------------------------------------------------
// Raw HTTP

// fetch + body; returns { status, headers, text, json } (json undefined when the body is not JSON).
export async function req(baseURL, method, p, { body, headers = {}, raw = false, timeoutMs = 120_000 } = {}) {
  const init = { method, headers: { ...headers }, signal: AbortSignal.timeout(timeoutMs) };
  if (body !== undefined) {
    init.body = raw ? body : JSON.stringify(body);
    if (!Object.keys(init.headers).some((k) => k.toLowerCase() === 'content-type')) init.headers['content-type'] = 'application/json';
  }
  const r = await fetch(baseURL + p, init);
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: r.status, headers: r.headers, text, json };
}
export const postJSON = (baseURL, p, body, o = {}) => req(baseURL, 'POST', p, { ...o, body });
export const getJSON = (baseURL, p, o = {}) => req(baseURL, 'GET', p, o);

// Parses an SSE body into [{event, data, json}] (json undefined where data is not JSON, e.g. [DONE]).
export function parseSSE(text) {
  const events = [];
  for (const block of text.replace(/\r\n/g, '\n').split('\n\n')) {
    if (!block.trim()) continue;
    let event = null;
    const data = [];
    let comment = true;
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) continue;
      comment = false;
      const i = line.indexOf(':');
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? '' : line.slice(i + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') event = value;
      else if (field === 'data') data.push(value);
    }
    if (comment) continue;
    const d = data.join('\n');
    let json;
    try { json = JSON.parse(d); } catch { json = undefined; }
    events.push({ event, data: d, json });
  }
  return events;
}

// POSTs and reads the whole SSE body: { status, headers, text, events }.
export async function postSSE(baseURL, p, body, { headers = {}, timeoutMs = 120_000 } = {}) {
  const r = await fetch(baseURL + p, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await r.text();
  let json;
  try { json = JSON.parse(text); } catch { json = undefined; }
  return { status: r.status, headers: r.headers, text, json, events: r.status === 200 ? parseSSE(text) : [] };
}

// One HTTP/1.1 request over node:http that still reads the response when the server answers before it has
// read the whole body (413) and closes (the upload may then fail with EPIPE / ECONNRESET).
// body: a Buffer/string sent with Content-Length, or { chunks: [...] } sent chunked.
export function rawHttp(port, { method = 'POST', path: p = '/', headers = {}, body, timeoutMs = 60_000 } = {}) {
  return new Promise((resolve, reject) => {
    const r = http.request({ host: '127.0.0.1', port, method, path: p, headers, agent: false }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => {
        const text = Buffer.concat(parts).toString('utf8');
        let json;
        try { json = JSON.parse(text); } catch { json = undefined; }
        resolve({ status: res.statusCode, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    let writeError = null;
    r.on('error', (e) => {
      writeError = e;
      // Give a response already on its way a moment to arrive.
      setTimeout(() => reject(e), 200);
    });
    r.setTimeout(timeoutMs, () => r.destroy(new Error('rawHttp timeout')));
    if (body && body.chunks) {
      (async () => {
        for (const c of body.chunks) {
          if (writeError) return;
          if (!r.write(c)) await new Promise((res2) => { r.once('drain', res2); r.once('error', res2); });
        }
        r.end();
      })();
    } else {
      r.end(body);
    }
  });
}

// A raw TCP exchange: sends `data`, collects what comes back until the server closes or timeoutMs (or, with
// untilResponse, until one whole response with a Content-Length has arrived).
// Returns { text, closed, error, ms }.
export function rawSocket(port, data, { timeoutMs = 10_000, endAfterWrite = false, untilResponse = false } = {}) {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect({ host: '127.0.0.1', port });
    const parts = [];
    let done = false;
    let error = null;
    const finish = (closed) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ text: Buffer.concat(parts).toString('latin1'), closed, error, ms: Date.now() - t0 });
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    s.on('data', (d) => {
      parts.push(d);
      if (untilResponse) {
        const t = Buffer.concat(parts).toString('latin1');
        const end = t.indexOf('\r\n\r\n');
        const cl = /\r\ncontent-length:\s*(\d+)/i.exec(t.slice(0, end));
        if (end >= 0 && cl && t.length >= end + 4 + Number(cl[1])) finish(false);
      }
    });
    s.on('error', (e) => { error = e; });
    s.on('close', () => finish(true));
    s.on('connect', () => {
      s.write(data, () => { if (endAfterWrite) s.end(); });
    });
  });
}

// ---------------------------------------------------------------------------------------------------------
// Metrics

// Parses Prometheus text into Map name -> sum of the values of its samples (labels summed over).
export function parseMetrics(text) {
  const m = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const r = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)/.exec(line);
    if (!r) continue;
    const v = Number(r[3]);
    m.set(r[1], (m.get(r[1]) || 0) + v);
  }
  return m;
}

export async function metrics(baseURL) {
  const r = await req(baseURL, 'GET', '/metrics');
  if (r.status !== 200) throw new Error(`/metrics returned ${r.status}: ${r.text}`);
  return parseMetrics(r.text);
}

// Polls /metrics until pred(map) is true; returns the last map (check it with assert afterwards).
export async function waitMetrics(baseURL, pred, timeoutMs = 5000) {
  const deadline = Date.now() + timeoutMs;
  let m;
  while (true) {
    m = await metrics(baseURL);
    if (pred(m) || Date.now() > deadline) return m;
    await sleep(100);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Raw DeepSeek-V4 output snippets for the scripted completion hook

export const WEATHER_TOOL_OPENAI = {
  type: 'function',
  function: {
    name: 'get_weather',
    description: 'Weather forecast of a city',
    parameters: {
      type: 'object',
      properties: { city: { type: 'string' }, days: { type: 'integer' } },
      required: ['city', 'days'],
    },
  },
};
export const TIME_TOOL_OPENAI = {
  type: 'function',
  function: {
    name: 'get_time',
    description: 'Local time of a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
  },
};
export const toAnthropicTool = (t) => ({
  name: t.function.name,
  description: t.function.description,
  input_schema: t.function.parameters,
});
export const WEATHER_TOOL_ANTHROPIC = toAnthropicTool(WEATHER_TOOL_OPENAI);
export const TIME_TOOL_ANTHROPIC = toAnthropicTool(TIME_TOOL_OPENAI);

export function dsmlParam(name, value, isString) {
  return `<｜DSML｜parameter name="${name}" string="${isString ? 'true' : 'false'}">${value}</｜DSML｜parameter>`;
}
export function dsmlInvoke(name, params) {
  return `<｜DSML｜invoke name="${name}">\n${params.join('\n')}\n</｜DSML｜invoke>`;
}
export function dsmlBlock(invokes) {
  return `\n\n<｜DSML｜tool_calls>\n${invokes.join('\n')}\n</｜DSML｜tool_calls>`;
}
export const WEATHER_INVOKE = dsmlInvoke('get_weather', [dsmlParam('city', 'Paris', true), dsmlParam('days', '3', false)]);
export const WEATHER_ARGS = { city: 'Paris', days: 3 };
export const TIME_INVOKE = dsmlInvoke('get_time', [dsmlParam('city', 'Tōkyō', true)]);
export const TIME_ARGS = { city: 'Tōkyō' };
// The exact tool-call block of the brief (one call), EOS included.
export const WEATHER_CALL_TEXT = dsmlBlock([WEATHER_INVOKE]) + EOS;

// Test-hook field: pieces are strings or arrays of byte values.
export const hook = (pieces, delay_ms = 0) => ({ dsv4_test: { pieces, delay_ms } });
export const bytesOf = (s) => Array.from(Buffer.from(s, 'utf8'));
// Splits a string into pieces of about n characters (by code points).
export function chunkString(s, n) {
  const cps = Array.from(s);
  const out = [];
  for (let i = 0; i < cps.length; i += n) out.push(cps.slice(i, i + n).join(''));
  return out;
}

// Text that must never leak out of the DSML parser.
export function assertNoMarkup(assert, text, what) {
  if (text == null) return;
  assert.ok(!text.includes('DSML'), `${what} contains "DSML": ${JSON.stringify(text)}`);
  assert.ok(!text.includes('｜'), `${what} contains "｜": ${JSON.stringify(text)}`);
  assert.ok(!text.includes('\uFFFD'), `${what} contains U+FFFD (a broken UTF-8 sequence): ${JSON.stringify(text)}`);
}

// Accumulates OpenAI chat chunks (SDK objects or parsed JSON) into one message; also checks the chunk-level
// contract as it goes and returns { content, reasoning, toolCalls[{index,id,type,name,arguments}], finish,
// usage, ids, roles, order[] ('r' | 'c' | 't'), chunks }.
export function accumulateChat(chunks) {
  const acc = { content: '', reasoning: '', toolCalls: [], finish: null, usage: null, ids: new Set(), roles: [], order: [], chunks, headerOrder: [], problems: [] };
  chunks.forEach((ch, i) => {
    acc.ids.add(ch.id);
    if (ch.usage) acc.usage = ch.usage;
    for (const c of ch.choices || []) {
      const d = c.delta || {};
      if (d.role != null) acc.roles.push(i);
      if (typeof d.reasoning_content === 'string' && d.reasoning_content.length) { acc.reasoning += d.reasoning_content; acc.order.push('r'); }
      if (typeof d.content === 'string' && d.content.length) { acc.content += d.content; acc.order.push('c'); }
      for (const tc of d.tool_calls || []) {
        acc.order.push('t');
        let slot = acc.toolCalls[tc.index];
        if (!slot) {
          if (!tc.id) acc.problems.push(`chunk ${i}: first delta of tool call ${tc.index} has no id`);
          if (!tc.function || !tc.function.name) acc.problems.push(`chunk ${i}: first delta of tool call ${tc.index} has no function.name`);
          if (tc.type !== 'function') acc.problems.push(`chunk ${i}: first delta of tool call ${tc.index} has type ${tc.type}`);
          slot = acc.toolCalls[tc.index] = { index: tc.index, id: tc.id, type: tc.type, name: tc.function?.name ?? '', arguments: '' };
          acc.headerOrder.push(tc.index);
        } else {
          if (tc.id && tc.id !== slot.id) acc.problems.push(`chunk ${i}: tool call ${tc.index} changed id ${slot.id} -> ${tc.id}`);
          if (tc.function?.name && tc.function.name !== slot.name) acc.problems.push(`chunk ${i}: tool call ${tc.index} repeated/changed name`);
        }
        if (typeof tc.function?.arguments === 'string') slot.arguments += tc.function.arguments;
      }
      if (c.finish_reason) {
        if (acc.finish) acc.problems.push(`chunk ${i}: second finish_reason ${c.finish_reason}`);
        acc.finish = c.finish_reason;
      }
    }
  });
  return acc;
}

// Collects an SDK stream into an array.
export async function collect(stream) {
  const out = [];
  for await (const x of stream) out.push(x);
  return out;
}
