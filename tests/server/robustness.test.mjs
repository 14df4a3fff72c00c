// `dsv4 serve` under bad input and bad clients: malformed requests, limits, auth, context overflow,
// disconnects, slow clients, more concurrent streams than slots.
import assert from 'node:assert/strict';
import { describe } from 'node:test';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import {
  useServer, postJSON, getJSON, req, postSSE, rawHttp, rawSocket, metrics, waitMetrics, hook, EOS, sleep,
  openaiClient, anthropicClient, collect,
} from './support.mjs';

const ANTHROPIC_HEADERS = { 'anthropic-version': '2023-06-01', 'x-api-key': 'sk-ant-test' };
const HELLO = [{ role: 'user', content: 'Hello!' }];
const LONG_TEXT = 'The state of the union is strong, and our people are free. '.repeat(400); // thousands of tokens

function checkOpenAIError(r, status, { type, code } = {}) {
  assert.equal(r.status, status, `status ${r.status}, body ${r.text.slice(0, 400)}`);
  assert.ok(r.json && typeof r.json === 'object', `JSON error body: ${r.text.slice(0, 400)}`);
  const e = r.json.error;
  assert.ok(e && typeof e === 'object', `OpenAI envelope {"error":{...}}: ${r.text.slice(0, 400)}`);
  assert.equal(typeof e.message, 'string');
  assert.ok(e.message.length > 0);
  assert.equal(typeof e.type, 'string');
  assert.ok('param' in e, 'error.param present (null allowed)');
  assert.ok('code' in e, 'error.code present (null allowed)');
  if (type) assert.equal(e.type, type);
  if (code) assert.equal(e.code, code);
}

function checkAnthropicError(r, status, type) {
  const statuses = Array.isArray(status) ? status : [status];
  assert.ok(statuses.includes(r.status), `status ${r.status}, body ${r.text.slice(0, 400)}`);
  assert.ok(r.json && typeof r.json === 'object', `JSON error body: ${r.text.slice(0, 400)}`);
  assert.equal(r.json.type, 'error', `Anthropic envelope {"type":"error",...}: ${r.text.slice(0, 400)}`);
  assert.equal(typeof r.json.error?.message, 'string');
  const types = Array.isArray(type) ? type : [type];
  assert.ok(types.includes(r.json.error.type), `error.type ${r.json.error.type}`);
}

// Runs each check, collecting failures, so that one failing case does not hide the others.
async function each(cases, fn) {
  const problems = [];
  for (const c of cases) {
    try {
      await fn(c);
    } catch (e) {
      problems.push(`${typeof c === 'string' ? JSON.stringify(c) : JSON.stringify(c).slice(0, 160)}: ${String(e.message).split('\n')[0]}`);
    }
  }
  assert.ok(problems.length === 0, `${problems.length} of ${cases.length} cases failed:\n  ${problems.join('\n  ')}`);
}

// --------------------------------------------------------------------------------------------------------
describe('bad requests, limits, context overflow', () => {
  const S = useServer({ hooks: true, args: ['--slots', '2', '--queue', '4', '-c', '1024', '--max-body', '65536'], name: 'limits' });

  S.test('malformed JSON -> 400 with each API\'s envelope', async () => {
    const cases = [];
    for (const body of ['{"model":', '{bad json}', '', '{"model":"m","messages":[]} trailing', '{"a":"\u0001\\q"}']) {
      for (const p of ['/v1/chat/completions', '/v1/completions', '/v1/responses', '/v1/messages']) cases.push({ p, body });
    }
    await each(cases, async ({ p, body }) => {
      const r = await req(S.baseURL, 'POST', p, { body, raw: true, headers: p === '/v1/messages' ? ANTHROPIC_HEADERS : {} });
      if (p === '/v1/messages') checkAnthropicError(r, 400, 'invalid_request_error');
      else checkOpenAIError(r, 400, { type: 'invalid_request_error' });
    });
  });

  S.test('invalid UTF-8 inside a JSON string -> 400', async () => {
    const body = Buffer.concat([Buffer.from('{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"a'), Buffer.from([0xff, 0xfe, 0xc3]), Buffer.from('"}]}')]);
    checkOpenAIError(await req(S.baseURL, 'POST', '/v1/chat/completions', { body, raw: true }), 400);
    checkAnthropicError(await req(S.baseURL, 'POST', '/v1/messages', { body, raw: true, headers: ANTHROPIC_HEADERS }), 400, 'invalid_request_error');
  });

  S.test('non-object JSON bodies -> 400', async () => {
    const cases = [];
    for (const body of ['[]', '"x"', '5', 'null', 'true', '[{"model":"m"}]']) {
      for (const p of ['/v1/chat/completions', '/v1/completions', '/v1/responses', '/tokenize', '/detokenize', '/v1/messages', '/v1/messages/count_tokens']) cases.push({ p, body });
    }
    await each(cases, async ({ p, body }) => {
      if (p.startsWith('/v1/messages')) {
        checkAnthropicError(await req(S.baseURL, 'POST', p, { body, raw: true, headers: ANTHROPIC_HEADERS }), 400, 'invalid_request_error');
      } else {
        checkOpenAIError(await req(S.baseURL, 'POST', p, { body, raw: true }), 400, { type: 'invalid_request_error' });
      }
    });
  });

  S.test('wrong field types -> 400 (chat completions)', async () => {
    const ok = { model: 'm', messages: HELLO, max_tokens: 4 };
    const bad = [
      { ...ok, messages: 5 },
      { ...ok, messages: 'hello' },
      { ...ok, messages: [] },
      { model: 'm', max_tokens: 4 },
      { ...ok, messages: [{ role: 'user', content: 5 }] },
      { ...ok, messages: [{ role: 'wizard', content: 'x' }] },
      { ...ok, messages: [5] },
      { ...ok, max_tokens: 'a' },
      { ...ok, max_tokens: -1 },
      { ...ok, max_tokens: 1.5 },
      { ...ok, temperature: 'hot' },
      { ...ok, top_p: 'x' },
      { ...ok, stream: 'yes' },
      { ...ok, stop: 5 },
      { ...ok, tools: 5 },
      { ...ok, tools: [{ type: 'function' }] },
      { ...ok, stream_options: 5 },
    ];
    await each(bad, async (body) => {
      checkOpenAIError(await postJSON(S.baseURL, '/v1/chat/completions', body), 400, { type: 'invalid_request_error' });
    });
    // The SDK turns it into a BadRequestError.
    await assert.rejects(
      S.openai.chat.completions.create({ model: 'm', messages: 5, max_tokens: 4 }),
      (e) => e instanceof OpenAI.BadRequestError && e.status === 400 && e.type === 'invalid_request_error',
    );
    // The same good request works.
    assert.equal((await postJSON(S.baseURL, '/v1/chat/completions', ok)).status, 200);
  });

  S.test('wrong field types -> 400 (completions, tokenizer)', async () => {
    const cases = [
      ['/v1/completions', { model: 'm', prompt: 5, max_tokens: 2 }],
      ['/v1/completions', { model: 'm', max_tokens: 2 }],
      ['/v1/completions', { model: 'm', prompt: 'x', max_tokens: 'a' }],
      ['/v1/responses', { model: 'm', input: 5 }],
      ['/v1/responses', { model: 'm', input: 'x', max_output_tokens: 'a' }],
      ['/tokenize', { content: 5 }],
      ['/tokenize', {}],
      ['/detokenize', { tokens: 'abc' }],
      ['/detokenize', { tokens: ['a'] }],
      ['/detokenize', { tokens: [-1] }],
      ['/detokenize', { tokens: [1e12] }],
    ];
    await each(cases, async ([p, body]) => {
      checkOpenAIError(await postJSON(S.baseURL, p, body), 400, { type: 'invalid_request_error' });
    });
  });

  S.test('wrong field types -> 400 (messages, count_tokens)', async () => {
    const ok = { model: 'm', messages: HELLO, max_tokens: 4 };
    const bad = [
      { ...ok, messages: 5 },
      { ...ok, max_tokens: 'a' },
      { model: 'm', max_tokens: 4 },
      { ...ok, messages: [{ role: 'user', content: 5 }] },
      { ...ok, messages: [{ role: 'system', content: 'x' }] },
      { ...ok, messages: [{ role: 'user', content: [{ type: 'bogus', text: 'x' }] }] },
      { ...ok, system: 5 },
      { ...ok, temperature: 'hot' },
      { ...ok, stop_sequences: 'STOP' },
      { ...ok, tools: [{ description: 'no name' }] },
      { ...ok, thinking: { type: 'bogus' } },
      { ...ok, tool_choice: { type: 'bogus' } },
      { ...ok, stream: 'yes' },
    ];
    await each(bad, async (body) => {
      checkAnthropicError(await postJSON(S.baseURL, '/v1/messages', body, { headers: ANTHROPIC_HEADERS }), 400, 'invalid_request_error');
    });
    checkAnthropicError(await postJSON(S.baseURL, '/v1/messages/count_tokens', { model: 'm', messages: 5 }, { headers: ANTHROPIC_HEADERS }), 400, 'invalid_request_error');
    await assert.rejects(
      S.anthropic.messages.create({ model: 'm', max_tokens: 'a', messages: HELLO }),
      (e) => e instanceof Anthropic.BadRequestError && e.status === 400 && e.error?.error?.type === 'invalid_request_error',
    );
    assert.equal((await postJSON(S.baseURL, '/v1/messages', ok, { headers: ANTHROPIC_HEADERS })).status, 200);
  });

  S.test('unknown path -> 404; wrong method -> 404 or 405', async () => {
    const r = await getJSON(S.baseURL, '/v1/nope');
    assert.equal(r.status, 404);
    assert.ok(r.json?.error?.message, r.text);
    const g = await getJSON(S.baseURL, '/v1/chat/completions');
    assert.ok([404, 405].includes(g.status), `GET /v1/chat/completions -> ${g.status}`);
    const p = await postJSON(S.baseURL, '/v1/models', {});
    assert.ok([404, 405].includes(p.status), `POST /v1/models -> ${p.status}`);
  });

  const big = JSON.stringify({ model: 'm', max_tokens: 4, messages: [{ role: 'user', content: 'x'.repeat(100_000) }] });

  S.test('oversized body with Content-Length -> 413 (OpenAI and Anthropic envelopes)', async () => {
    const o = await rawHttp(S.server.port, { method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(big) }, body: big });
    checkOpenAIError(o, 413);
    const a = await rawHttp(S.server.port, { method: 'POST', path: '/v1/messages', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(big), ...ANTHROPIC_HEADERS }, body: big });
    checkAnthropicError(a, 413, 'request_too_large');
    assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
  });

  S.test('oversized chunked body (no Content-Length) -> 413', async () => {
    // 160 KB of valid JSON sent chunked: the server must count while reading.
    const chunks = Array.from({ length: 20 }, (_, i) => (i === 0 ? '{"model":"m","max_tokens":4,"messages":[{"role":"user","content":"' : '') + 'y'.repeat(8000) + (i === 19 ? '"}]}' : ''));
    const c = await rawHttp(S.server.port, { method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked' }, body: { chunks } });
    checkOpenAIError(c, 413);
    const a = await rawHttp(S.server.port, { method: 'POST', path: '/v1/messages', headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked', ...ANTHROPIC_HEADERS }, body: { chunks } });
    checkAnthropicError(a, 413, 'request_too_large');
    assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
  });

  S.test('a huge declared Content-Length is refused with 413 up front (no body sent)', async () => {
    const d = await rawSocket(S.server.port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 100000000000\r\n\r\n', { timeoutMs: 5000 });
    assert.match(d.text, /^HTTP\/1\.[01] 413 /, `got ${JSON.stringify(d.text.slice(0, 200))} (closed: ${d.closed}, after ${d.ms} ms)`);
    assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
  });

  S.test('a body just under --max-body is read (then refused for its length in tokens)', async () => {
    const under = JSON.stringify({ model: 'm', max_tokens: 4, messages: [{ role: 'user', content: LONG_TEXT.slice(0, 60_000) }] });
    checkOpenAIError(await req(S.baseURL, 'POST', '/v1/chat/completions', { body: under, raw: true }), 400, { code: 'context_length_exceeded' });
  });

  S.test('oversized header (one 200 KB line) -> 431 or 400 and the server stays up', async () => {
    const r = await rawSocket(S.server.port, `GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Big: ${'a'.repeat(200_000)}\r\n\r\n`, { timeoutMs: 10_000, untilResponse: true });
    const m = /^HTTP\/1\.[01] (\d{3}) /.exec(r.text);
    assert.ok(m, `a status line comes back (got ${JSON.stringify(r.text.slice(0, 100))}, closed=${r.closed}, error=${r.error?.code})`);
    assert.ok([431, 400].includes(Number(m[1])), `status ${m[1]}`);
    assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
  });

  S.test('oversized header section (5,000 small lines, 235 KB) -> 431 or 400 and the server stays up', async () => {
    const many = Array.from({ length: 5000 }, (_, i) => `X-H${i}: ${'b'.repeat(40)}\r\n`).join('');
    const r2 = await rawSocket(S.server.port, `GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n${many}\r\n`, { timeoutMs: 10_000, untilResponse: true });
    const m2 = /^HTTP\/1\.[01] (\d{3}) /.exec(r2.text);
    assert.ok(m2 && [431, 400].includes(Number(m2[1])), `many headers: ${JSON.stringify(r2.text.slice(0, 100))}`);
    assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
  });

  S.test('garbage on the socket -> 400 or close, and the server stays up', async () => {
    const junks = ['GARBAGE\r\n\r\n', '\x00\x01\x02\x03\r\n\r\n', 'GET / HTTP/9.9\r\n\r\n',
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n',
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n',
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n'];
    await each(junks, async (junk) => {
      // The client half-closes after sending: the server has all there is.
      const r = await rawSocket(S.server.port, junk, { timeoutMs: 5000, endAfterWrite: true });
      const m = /^HTTP\/1\.[01] (\d{3}) /.exec(r.text);
      if (m) assert.ok(Number(m[1]) >= 400 && Number(m[1]) < 500, `-> ${m[1]}`);
      else assert.ok(r.closed, 'neither a 4xx nor a close within 5 s');
      assert.ok(S.server.alive(), 'the server died');
      assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
    });
  });

  S.test('context overflow: OpenAI 400 context_length_exceeded (chat, stream, completions)', async () => {
    const body = { model: 'm', max_tokens: 4, messages: [{ role: 'user', content: LONG_TEXT }] };
    checkOpenAIError(await postJSON(S.baseURL, '/v1/chat/completions', body), 400, { type: 'invalid_request_error', code: 'context_length_exceeded' });
    // Streaming: the refusal is an HTTP 400 before any event, not an error inside a 200 stream.
    checkOpenAIError(await postJSON(S.baseURL, '/v1/chat/completions', { ...body, stream: true }), 400, { code: 'context_length_exceeded' });
    checkOpenAIError(await postJSON(S.baseURL, '/v1/completions', { model: 'm', max_tokens: 4, prompt: LONG_TEXT }), 400, { code: 'context_length_exceeded' });
    await assert.rejects(
      S.openai.chat.completions.create(body),
      (e) => e instanceof OpenAI.BadRequestError && e.code === 'context_length_exceeded',
    );
  });

  S.test('context overflow: Anthropic 400 invalid_request_error (stream too)', async () => {
    const body = { model: 'm', max_tokens: 4, messages: [{ role: 'user', content: LONG_TEXT }] };
    checkAnthropicError(await postJSON(S.baseURL, '/v1/messages', body, { headers: ANTHROPIC_HEADERS }), 400, 'invalid_request_error');
    checkAnthropicError(await postJSON(S.baseURL, '/v1/messages', { ...body, stream: true }, { headers: ANTHROPIC_HEADERS }), 400, 'invalid_request_error');
    await assert.rejects(S.anthropic.messages.create(body), (e) => e instanceof Anthropic.BadRequestError);
    // count_tokens still counts it (counting is not generating).
    const c = await postJSON(S.baseURL, '/v1/messages/count_tokens', { model: 'm', messages: body.messages }, { headers: ANTHROPIC_HEADERS });
    assert.equal(c.status, 200, c.text);
    assert.ok(c.json.input_tokens > 1024);
  });

  S.test('the server still generates after all that', async () => {
    const r = await S.openai.chat.completions.create({ model: 'm', messages: HELLO, max_tokens: 4, temperature: 0 });
    assert.ok(r.usage.completion_tokens >= 1);
    const m = await metrics(S.baseURL);
    assert.equal(m.get('dsv4_active_sequences'), 0);
    assert.equal(m.get('dsv4_queue_depth'), 0);
  });
});

// --------------------------------------------------------------------------------------------------------
describe('auth (--api-key) and --alias', () => {
  const KEY = 'sk-secret-123';
  const S = useServer({ hooks: true, args: ['--api-key', KEY, '--alias', 'my-model', '-c', '1024'], name: 'auth', apiKey: KEY });

  S.test('/health is public; the API needs the key', async () => {
    assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
    for (const headers of [{}, { authorization: 'Bearer wrong' }, { authorization: KEY }, { authorization: 'Basic ' + Buffer.from('a:' + KEY).toString('base64') }, { 'x-api-key': 'wrong' }]) {
      const m = await getJSON(S.baseURL, '/v1/models', { headers });
      checkOpenAIError(m, 401, { type: 'invalid_request_error', code: 'invalid_api_key' });
      const c = await postJSON(S.baseURL, '/v1/chat/completions', { model: 'm', messages: HELLO, max_tokens: 2 }, { headers });
      checkOpenAIError(c, 401, { code: 'invalid_api_key' });
      const a = await postJSON(S.baseURL, '/v1/messages', { model: 'm', messages: HELLO, max_tokens: 2 }, { headers: { 'anthropic-version': '2023-06-01', ...headers } });
      checkAnthropicError(a, 401, 'authentication_error');
    }
  });

  S.test('the right key works through Authorization: Bearer and x-api-key', async () => {
    for (const headers of [{ authorization: `Bearer ${KEY}` }, { 'x-api-key': KEY }]) {
      const m = await getJSON(S.baseURL, '/v1/models', { headers });
      assert.equal(m.status, 200, JSON.stringify(headers));
      assert.equal(m.json.data[0].id, 'my-model', '--alias names the model');
      const c = await postJSON(S.baseURL, '/v1/chat/completions', { model: 'm', messages: HELLO, max_tokens: 2 }, { headers });
      assert.equal(c.status, 200, c.text);
      const a = await postJSON(S.baseURL, '/v1/messages', { model: 'm', messages: HELLO, max_tokens: 2 }, { headers: { 'anthropic-version': '2023-06-01', ...headers } });
      assert.equal(a.status, 200, a.text);
    }
  });

  S.test('SDKs: wrong key -> AuthenticationError, right key -> answers', async () => {
    await assert.rejects(openaiClient(S.baseURL, 'nope').models.list(), (e) => e instanceof OpenAI.AuthenticationError && e.status === 401);
    await assert.rejects(anthropicClient(S.baseURL, 'nope').messages.create({ model: 'm', max_tokens: 2, messages: HELLO }), (e) => e instanceof Anthropic.AuthenticationError && e.status === 401);
    const r = await S.openai.chat.completions.create({ model: 'm', messages: HELLO, max_tokens: 2 });
    assert.equal(r.choices.length, 1);
    const m = await S.anthropic.messages.create({ model: 'm', messages: HELLO, max_tokens: 2 });
    assert.equal(m.type, 'message');
    const t = await S.anthropic.messages.countTokens({ model: 'm', messages: HELLO });
    assert.ok(t.input_tokens > 0);
  });

  S.test('streaming endpoints refuse a missing key with 401 before any event', async () => {
    const r = await postSSE(S.baseURL, '/v1/chat/completions', { model: 'm', messages: HELLO, max_tokens: 2, stream: true });
    assert.equal(r.status, 401);
    const a = await postSSE(S.baseURL, '/v1/messages', { model: 'm', messages: HELLO, max_tokens: 2, stream: true }, { headers: { 'anthropic-version': '2023-06-01' } });
    assert.equal(a.status, 401);
  });
});

// --------------------------------------------------------------------------------------------------------
describe('disconnects', () => {
  const S = useServer({ hooks: true, args: ['--slots', '2', '--queue', '4', '-c', '1024'], name: 'disconnect' });
  const longPieces = (n) => Array.from({ length: n }, (_, i) => ` w${i}`);

  async function idle(ms = 4000) {
    const m = await waitMetrics(S.baseURL, (x) => x.get('dsv4_active_sequences') === 0 && x.get('dsv4_queue_depth') === 0, ms);
    assert.equal(m.get('dsv4_active_sequences'), 0, 'active sequences back to 0');
    assert.equal(m.get('dsv4_queue_depth'), 0, 'queue back to 0');
  }

  S.test('OpenAI stream aborted mid-way frees its slot', async () => {
    // 200 pieces x 50 ms = 10 s if nobody noticed the disconnect.
    const ac = new AbortController();
    const stream = await S.openai.chat.completions.create({ model: 'm', messages: HELLO, max_tokens: 400, stream: true, ...hook(longPieces(200), 50) }, { signal: ac.signal });
    let n = 0;
    try {
      for await (const _ of stream) { if (++n === 4) ac.abort(); }
    } catch (e) {
      assert.ok(e.name === 'AbortError' || e instanceof OpenAI.APIUserAbortError || /abort/i.test(String(e)), String(e));
    }
    assert.equal(n, 4, 'no chunk after the abort');
    await idle();
  });

  S.test('Anthropic stream aborted mid-way frees its slot', async () => {
    const ac = new AbortController();
    const stream = await S.anthropic.messages.create({ model: 'm', messages: HELLO, max_tokens: 400, stream: true, ...hook(longPieces(200), 50) }, { signal: ac.signal });
    let n = 0;
    try {
      for await (const _ of stream) { if (++n === 5) ac.abort(); }
    } catch (e) {
      assert.ok(e.name === 'AbortError' || e instanceof Anthropic.APIUserAbortError || /abort/i.test(String(e)), String(e));
    }
    assert.equal(n, 5, 'no event after the abort');
    await idle();
  });

  S.test('raw fetch stream cancelled after the first bytes frees its slot (responses and completions too)', async () => {
    for (const [p, body] of [
      ['/v1/responses', { model: 'm', input: 'Hello', max_output_tokens: 400, stream: true, ...hook(longPieces(200), 50) }],
      ['/v1/completions', { model: 'm', prompt: 'Hello', max_tokens: 400, stream: true, ...hook(longPieces(200), 50) }],
      ['/v1/chat/completions', { model: 'm', messages: HELLO, max_tokens: 400, stream: true, ...hook(longPieces(200), 50) }],
    ]) {
      const ac = new AbortController();
      const r = await fetch(S.baseURL + p, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), signal: ac.signal });
      assert.equal(r.status, 200, p);
      const reader = r.body.getReader();
      await reader.read();
      ac.abort();
      await reader.read().catch(() => {});
      await idle();
    }
  });

  S.test('a queued request that disconnects leaves the queue; the running ones finish', async () => {
    const acs = [new AbortController(), new AbortController(), new AbortController()];
    const started = [];
    for (let i = 0; i < 2; i++) {
      started.push(fetch(S.baseURL + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, signal: acs[i].signal, body: JSON.stringify({ model: 'm', messages: HELLO, max_tokens: 400, stream: true, ...hook(longPieces(200), 50) }) }));
    }
    const rs = await Promise.all(started);
    for (const r of rs) assert.equal(r.status, 200);
    const readers = rs.map((r) => r.body.getReader());
    await Promise.all(readers.map((x) => x.read()));
    let m = await waitMetrics(S.baseURL, (x) => x.get('dsv4_active_sequences') === 2);
    assert.equal(m.get('dsv4_active_sequences'), 2);
    // The third waits in the queue (its response headers may or may not have been sent yet).
    const third = fetch(S.baseURL + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, signal: acs[2].signal, body: JSON.stringify({ model: 'm', messages: HELLO, max_tokens: 8, stream: true, ...hook(['x', EOS]) }) }).catch((e) => e);
    m = await waitMetrics(S.baseURL, (x) => x.get('dsv4_queue_depth') === 1, 3000);
    assert.equal(m.get('dsv4_queue_depth'), 1, 'the third request is queued');
    acs[2].abort();
    await third;
    m = await waitMetrics(S.baseURL, (x) => x.get('dsv4_queue_depth') === 0, 3000);
    assert.equal(m.get('dsv4_queue_depth'), 0, 'the aborted request left the queue');
    assert.equal(m.get('dsv4_active_sequences'), 2);
    acs[0].abort();
    acs[1].abort();
    await Promise.all(readers.map((x) => x.read().catch(() => {})));
    await idle();
  });

  S.test('the server serves normally after the disconnects', async () => {
    const r = await S.openai.chat.completions.create({ model: 'm', messages: HELLO, max_tokens: 8, ...hook(['All', ' good.', EOS]) });
    assert.equal(r.choices[0].message.content, 'All good.');
  });
});

// --------------------------------------------------------------------------------------------------------
describe('more concurrent streams than slots', () => {
  const SLOTS = 2, QUEUE = 2;
  const S = useServer({ hooks: true, args: ['--slots', String(SLOTS), '--queue', String(QUEUE), '-c', '1024'], name: 'overload' });
  const pieces = Array.from({ length: 20 }, (_, i) => ` p${i}`);
  const expected = pieces.join('');

  // Each admitted stream takes about 1 s (20 pieces x 50 ms); a 429 must come at once. A request that gets
  // no answer in 10 s (e.g. a connection that waits for a free server thread) fails the test.
  async function oneStream(i, p = '/v1/chat/completions') {
    const t0 = Date.now();
    const body = { model: 'm', messages: [{ role: 'user', content: `Request ${i}` }], max_tokens: 64, stream: true, ...hook([...pieces, EOS], 50) };
    try {
      const r = await postSSE(S.baseURL, p, body, { timeoutMs: 10_000, headers: p === '/v1/messages' ? ANTHROPIC_HEADERS : {} });
      r.ms = Date.now() - t0;
      return r;
    } catch (e) {
      return { status: 0, text: String(e), error: e, ms: Date.now() - t0, events: [] };
    }
  }
  const summary = (rs) => rs.map((r) => `${r.status}@${r.ms}ms`).join(', ');

  S.test(`slots + queue (${SLOTS + QUEUE}) concurrent streams all complete`, async () => {
    const rs = await Promise.all(Array.from({ length: SLOTS + QUEUE }, (_, i) => oneStream(i)));
    assert.deepEqual(rs.map((r) => r.status), rs.map(() => 200), summary(rs));
    for (const r of rs) {
      assert.equal(r.status, 200, r.text);
      assert.ok(r.text.trimEnd().endsWith('data: [DONE]'));
      const text = r.events.filter((e) => e.json).map((e) => e.json.choices?.[0]?.delta?.content ?? '').join('');
      assert.equal(text, expected);
    }
  });

  S.test('past slots + queue: the rest get 429 with the error envelope, the admitted ones complete', async () => {
    const N = 3 * (SLOTS + QUEUE);
    const rs = await Promise.all(Array.from({ length: N }, (_, i) => oneStream(i)));
    const ok = rs.filter((r) => r.status === 200);
    const busy = rs.filter((r) => r.status === 429);
    assert.equal(ok.length + busy.length, N, `every request answered 200 or 429 within 10 s: ${summary(rs)}`);
    assert.ok(ok.length >= SLOTS + QUEUE, `at least slots+queue admitted: ${summary(rs)}`);
    assert.ok(busy.length >= 1, `some 429 when ${N} arrive at once: ${summary(rs)}`);
    for (const r of busy) assert.ok(r.ms < 2000, `a 429 comes at once: ${summary(rs)}`);
    for (const r of ok) {
      const text = r.events.filter((e) => e.json).map((e) => e.json.choices?.[0]?.delta?.content ?? '').join('');
      assert.equal(text, expected);
    }
    for (const r of busy) {
      checkOpenAIError({ status: r.status, text: r.text, json: r.json }, 429);
    }
    const m = await waitMetrics(S.baseURL, (x) => x.get('dsv4_active_sequences') === 0 && x.get('dsv4_queue_depth') === 0);
    assert.equal(m.get('dsv4_active_sequences'), 0);
  });

  S.test('Anthropic past the queue: 429/529 overloaded_error; SDK raises RateLimitError or InternalServerError', async () => {
    const N = 3 * (SLOTS + QUEUE);
    const rs = await Promise.all(Array.from({ length: N }, (_, i) => oneStream(i, '/v1/messages')));
    assert.ok(rs.every((r) => r.status !== 0), `every request answered within 10 s: ${summary(rs)}`);
    const busy = rs.filter((r) => r.status !== 200);
    assert.ok(busy.length >= 1, summary(rs));
    for (const r of busy) checkAnthropicError(r, [429, 529], ['overloaded_error', 'rate_limit_error']);
    const ok = rs.filter((r) => r.status === 200);
    assert.ok(ok.length >= SLOTS + QUEUE);
    for (const r of ok) assert.equal(r.events.filter((e) => e.event === 'message_stop').length, 1);
    await waitMetrics(S.baseURL, (x) => x.get('dsv4_active_sequences') === 0);
  });
});

// --------------------------------------------------------------------------------------------------------
describe('slow clients (--timeout 2)', () => {
  const S = useServer({ hooks: true, args: ['--timeout', '2', '--slots', '2', '-c', '1024'], name: 'slow' });

  S.test('half a request, then silence: closed after the read timeout, others served meanwhile', async () => {
    const halves = [
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{"model":"m","mess',
      'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Ty',
      'GET /health HTTP/1.1\r\n',
    ];
    // Several stalled sockets at once (more than the slots), so a server that gives each connection a
    // worker of a small pool would be stuck.
    const stalled = [];
    for (let i = 0; i < 4; i++) for (const h of halves) stalled.push(rawSocket(S.server.port, h, { timeoutMs: 12_000 }));
    await sleep(300);
    // Meanwhile others are served (fresh connections).
    const t0 = Date.now();
    const h = await rawHttp(S.server.port, { method: 'GET', path: '/health' });
    assert.equal(h.status, 200);
    const body = JSON.stringify({ model: 'm', messages: HELLO, max_tokens: 8, ...hook(['Still', ' here.', EOS]) });
    const c = await rawHttp(S.server.port, { method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }, body });
    assert.equal(c.status, 200, c.text);
    assert.equal(c.json.choices[0].message.content, 'Still here.');
    assert.ok(Date.now() - t0 < 1500, 'served while the stalled sockets are open');
    const res = await Promise.all(stalled);
    for (const [i, r] of res.entries()) {
      assert.ok(r.closed, `stalled socket ${i} (${JSON.stringify(halves[i % halves.length].slice(0, 30))}) closed by the server (got ${JSON.stringify(r.text.slice(0, 80))})`);
      assert.ok(r.ms >= 1500, `not closed before the timeout (${r.ms} ms)`);
      assert.ok(r.ms <= 2000 + 4000, `closed within the timeout + slack (${r.ms} ms)`);
      if (r.text) assert.match(r.text, /^HTTP\/1\.[01] (408|400) /, 'if anything, a 408/400');
    }
  });

  S.test('an idle keep-alive connection is closed after the timeout', async () => {
    const r = await rawSocket(S.server.port, 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n', { timeoutMs: 10_000 });
    assert.match(r.text, /^HTTP\/1\.1 200 /);
    assert.ok(r.closed, 'closed');
    assert.ok(r.ms >= 1500 && r.ms <= 6000, `after about 2 s (${r.ms} ms)`);
  });

  S.test('a client that stops reading a stream does not block the others', async () => {
    // Open a stream and never read it: the pieces are small, so socket buffers absorb them; the point is
    // the other slot keeps serving while this one writes.
    const body = JSON.stringify({ model: 'm', messages: HELLO, max_tokens: 64, stream: true, ...hook(Array.from({ length: 30 }, () => ' z'.repeat(10)), 20) });
    const s = rawSocket(S.server.port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`, { timeoutMs: 8000 });
    const body2 = JSON.stringify({ model: 'm', messages: HELLO, max_tokens: 8, ...hook(['ok', EOS]) });
    const c = await rawHttp(S.server.port, { method: 'POST', path: '/v1/chat/completions', headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body2) }, body: body2 });
    assert.equal(c.status, 200);
    const r = await s;
    assert.match(r.text, /^HTTP\/1\.1 200 /);
    assert.ok(r.text.includes('data: [DONE]'), 'the stream finished');
    const m = await waitMetrics(S.baseURL, (x) => x.get('dsv4_active_sequences') === 0);
    assert.equal(m.get('dsv4_active_sequences'), 0);
  });
});

// --------------------------------------------------------------------------------------------------------
async function termAndWait(S, what) {
  const t0 = Date.now();
  S.server.proc.kill('SIGTERM');
  await Promise.race([S.server.exited, sleep(5000)]);
  assert.ok(!S.server.alive(), `${what}: still running ${Date.now() - t0} ms after SIGTERM`);
  const info = S.server.exitInfo();
  assert.ok(info.code === 0 || info.signal === 'SIGTERM', `exit ${JSON.stringify(info)}`);
}

describe('shutdown: SIGTERM with no connection', () => {
  // (startServer polls /health on fresh connections that close.)
  const S = useServer({ args: ['-c', '1024'], name: 'shutdown-idle' });
  S.test('exits within 5 s', { allowExit: true }, async () => {
    const r = await rawHttp(S.server.port, { method: 'GET', path: '/health' });
    assert.equal(r.status, 200);
    await sleep(200);
    await termAndWait(S, 'no connection open');
  });
});

describe('shutdown: SIGTERM with an idle keep-alive connection', () => {
  const S = useServer({ args: ['-c', '1024'], name: 'shutdown-keepalive' });
  S.test('exits within 5 s', { allowExit: true }, async () => {
    const sock = rawSocket(S.server.port, 'GET /health HTTP/1.1\r\nHost: x\r\n\r\n', { timeoutMs: 8000 });
    await sleep(300);
    await termAndWait(S, 'an idle keep-alive connection open');
    await sock;
  });
});

describe('shutdown: SIGTERM during a stream', () => {
  const S = useServer({ hooks: true, args: ['-c', '1024'], name: 'shutdown-stream' });
  S.test('exits within 5 s; the stream ends', { allowExit: true }, async () => {
    const r = await fetch(S.baseURL + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'm', messages: HELLO, max_tokens: 400, stream: true, ...hook(Array.from({ length: 200 }, () => ' x'), 50) }) });
    assert.equal(r.status, 200);
    const reader = r.body.getReader();
    await reader.read();
    const rest = (async () => { try { while (!(await reader.read()).done); } catch { /* reset */ } })();
    await termAndWait(S, 'a stream running');
    await rest;
  });
});
