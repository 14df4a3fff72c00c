// The DSML tool-call parser of `dsv4 serve` under every split of the raw model output, through the scripted
// completion hook (--test-hooks): the text arrives in pieces whose boundaries fall anywhere, inside the
// fullwidth bars of the markup and inside UTF-8 sequences, and the markup must never leak into content,
// reasoning or arguments while the tool call arrives intact.
import assert from 'node:assert/strict';
import {
  useServer, postSSE, postJSON, accumulateChat, hook, bytesOf, EOS, WEATHER_TOOL_OPENAI, WEATHER_TOOL_ANTHROPIC,
  WEATHER_ARGS, WEATHER_CALL_TEXT, assertNoMarkup,
} from './support.mjs';

const SLOTS = 2;
const S = useServer({ hooks: true, args: ['--slots', String(SLOTS), '--queue', '8', '-c', '2048'], name: 'dsml' });

const REASONING = 'Need the weather: café ☕.';
const CONTENT = 'Sure — vérifions.';
const TEXT = `${REASONING}</think>${CONTENT}${WEATHER_CALL_TEXT}`;
const WEATHER_ARGS_TEXT = '{"city": "Paris", "days": 3}'; // the arguments as the parser writes them
const BYTES = bytesOf(TEXT);
const BLOCK_START = Buffer.byteLength(`${REASONING}</think>${CONTENT}`);
const ANTHROPIC_HEADERS = { 'anthropic-version': '2023-06-01', 'x-api-key': 'sk-ant-test' };
const USER = [{ role: 'user', content: 'What is the weather in Paris for 3 days?' }];

const openaiBody = (pieces, extra = {}) => ({
  model: 'm', messages: USER, tools: [WEATHER_TOOL_OPENAI], max_tokens: 4096, thinking: { type: 'enabled' }, ...hook(pieces), ...extra,
});
const anthropicBody = (pieces, extra = {}) => ({
  model: 'm', messages: USER, tools: [WEATHER_TOOL_ANTHROPIC], max_tokens: 4096, thinking: { type: 'enabled', budget_tokens: 2048 }, ...hook(pieces), ...extra,
});

// Runs fn over items with at most `n` in flight.
async function pool(items, n, fn) {
  const out = new Array(items.length);
  let next = 0;
  await Promise.all(Array.from({ length: n }, async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  }));
  return out;
}

// The OpenAI stream of one split, checked; returns a list of problems (empty when all is well).
async function openaiSplit(pieces, { stream = true } = {}) {
  const problems = [];
  const check = (cond, msg) => { if (!cond) problems.push(msg); };
  let msg;
  if (stream) {
    const r = await postSSE(S.baseURL, '/v1/chat/completions', openaiBody(pieces, { stream: true }));
    if (r.status !== 200) return [`status ${r.status}: ${r.text.slice(0, 300)}`];
    check(r.text.trimEnd().endsWith('data: [DONE]'), 'no final [DONE]');
    const acc = accumulateChat(r.events.filter((e) => e.json).map((e) => e.json));
    problems.push(...acc.problems);
    msg = { content: acc.content, reasoning: acc.reasoning, calls: acc.toolCalls, finish: acc.finish };
  } else {
    const r = await postJSON(S.baseURL, '/v1/chat/completions', openaiBody(pieces));
    if (r.status !== 200) return [`status ${r.status}: ${r.text.slice(0, 300)}`];
    const m = r.json.choices[0].message;
    msg = {
      content: m.content ?? '', reasoning: m.reasoning_content ?? '', finish: r.json.choices[0].finish_reason,
      calls: (m.tool_calls ?? []).map((c) => ({ id: c.id, name: c.function.name, arguments: c.function.arguments })),
    };
  }
  for (const [what, text] of [['content', msg.content], ['reasoning', msg.reasoning], ...msg.calls.map((c, i) => [`arguments[${i}]`, c.arguments])]) {
    try { assertNoMarkup(assert, text, what); } catch (e) { problems.push(e.message); }
  }
  check(msg.reasoning === REASONING, `reasoning ${JSON.stringify(msg.reasoning)}`);
  check(msg.content === CONTENT, `content ${JSON.stringify(msg.content)}`);
  check(msg.finish === 'tool_calls', `finish_reason ${msg.finish}`);
  check(msg.calls.length === 1, `${msg.calls.length} tool calls`);
  if (msg.calls.length) {
    check(msg.calls[0].name === 'get_weather', `name ${msg.calls[0].name}`);
    check(/^call_/.test(msg.calls[0].id ?? ''), `id ${msg.calls[0].id}`);
    let args;
    try { args = JSON.parse(msg.calls[0].arguments); } catch { args = msg.calls[0].arguments; }
    check(JSON.stringify(args) === JSON.stringify(WEATHER_ARGS), `arguments ${JSON.stringify(msg.calls[0].arguments)}`);
  }
  return problems;
}

// The Anthropic stream of one split, checked; returns a list of problems.
async function anthropicSplit(pieces) {
  const problems = [];
  const check = (cond, msg) => { if (!cond) problems.push(msg); };
  const r = await postSSE(S.baseURL, '/v1/messages', anthropicBody(pieces, { stream: true }), { headers: ANTHROPIC_HEADERS });
  if (r.status !== 200) return [`status ${r.status}: ${r.text.slice(0, 300)}`];
  const blocks = [];
  let stop = null;
  for (const e of r.events) {
    const d = e.json;
    if (!d) { problems.push(`non-JSON event ${e.data}`); continue; }
    if (d.type === 'content_block_start') {
      check(d.index === blocks.length, `block index ${d.index} (expected ${blocks.length})`);
      blocks.push({ type: d.content_block.type, name: d.content_block.name, text: '', signature: '' });
    } else if (d.type === 'content_block_delta') {
      const b = blocks[d.index];
      if (!b) { problems.push(`delta for unknown block ${d.index}`); continue; }
      if (d.delta.type === 'text_delta') b.text += d.delta.text;
      else if (d.delta.type === 'thinking_delta') b.text += d.delta.thinking;
      else if (d.delta.type === 'input_json_delta') b.text += d.delta.partial_json;
      else if (d.delta.type === 'signature_delta') b.signature += d.delta.signature;
    } else if (d.type === 'message_delta') {
      stop = d.delta.stop_reason;
    }
  }
  for (const [i, b] of blocks.entries()) {
    try { assertNoMarkup(assert, b.text, `block ${i} (${b.type})`); } catch (e) { problems.push(e.message); }
  }
  const types = blocks.map((b) => b.type).join(',');
  check(types === 'thinking,text,tool_use', `blocks ${types}`);
  check(stop === 'tool_use', `stop_reason ${stop}`);
  if (types === 'thinking,text,tool_use') {
    check(blocks[0].text === REASONING, `thinking ${JSON.stringify(blocks[0].text)}`);
    check(blocks[0].signature.length > 0, 'no signature');
    check(blocks[1].text === CONTENT, `text ${JSON.stringify(blocks[1].text)}`);
    check(blocks[2].name === 'get_weather', `name ${blocks[2].name}`);
    let input;
    try { input = JSON.parse(blocks[2].text); } catch { input = blocks[2].text; }
    check(JSON.stringify(input) === JSON.stringify(WEATHER_ARGS), `input ${JSON.stringify(blocks[2].text)}`);
  }
  return problems;
}

function report(results, label) {
  const bad = results.map((p, k) => [k, p]).filter(([, p]) => p.length);
  if (bad.length) {
    const lines = bad.slice(0, 12).map(([k, p]) => `  ${label(k)}: ${p.join('; ')}`);
    assert.fail(`${bad.length} of ${results.length} splits failed, e.g.\n${lines.join('\n')}`);
  }
}

const splitAt = (k) => [BYTES.slice(0, k), BYTES.slice(k)];
const KS = Array.from({ length: BYTES.length - 1 }, (_, i) => i + 1);

S.test('the unsplit text parses (one piece) on both APIs, stream and not', async () => {
  assert.deepEqual(await openaiSplit([TEXT]), []);
  assert.deepEqual(await openaiSplit([TEXT], { stream: false }), []);
  assert.deepEqual(await anthropicSplit([TEXT]), []);
});

S.test('one byte per piece (every boundary at once) on both APIs', async () => {
  const pieces = BYTES.map((b) => [b]);
  assert.deepEqual(await openaiSplit(pieces), []);
  assert.deepEqual(await openaiSplit(pieces, { stream: false }), []);
  assert.deepEqual(await anthropicSplit(pieces), []);
});

S.test(`OpenAI stream: two pieces split at every byte k in 1..${BYTES.length - 1}`, async () => {
  const results = await pool(KS, SLOTS, (k) => openaiSplit(splitAt(k)));
  report(results, (i) => `k=${KS[i]} (${JSON.stringify(Buffer.from(BYTES.slice(Math.max(0, KS[i] - 6), KS[i])).toString('latin1'))}|...)`);
});

S.test(`Anthropic stream: two pieces split at every byte k in 1..${BYTES.length - 1}`, async () => {
  const results = await pool(KS, SLOTS, (k) => anthropicSplit(splitAt(k)));
  report(results, (i) => `k=${KS[i]}`);
});

S.test('OpenAI non-stream: splits at every 7th byte', async () => {
  const ks = KS.filter((k) => k % 7 === 0);
  const results = await pool(ks, SLOTS, (k) => openaiSplit(splitAt(k), { stream: false }));
  report(results, (i) => `k=${ks[i]}`);
});

// A stream cut inside the tool-call block (the pieces run out): the partial markup is dropped, no tool call
// is invented, finish_reason "length".
S.test('a completion cut inside the tool-call block reports no tool call and no markup', async () => {
  const cuts = [];
  for (let k = BLOCK_START; k < BYTES.length - Buffer.byteLength(EOS); k += 3) cuts.push(k);
  const invokeEnd = TEXT.indexOf('</｜DSML｜invoke>') + '</｜DSML｜invoke>'.length;
  const invokeEndByte = Buffer.byteLength(TEXT.slice(0, invokeEnd));
  const results = await pool(cuts, SLOTS, async (k) => {
    const problems = [];
    for (const stream of [true, false]) {
      const pieces = [BYTES.slice(0, BLOCK_START), BYTES.slice(BLOCK_START, k)].filter((p) => p.length);
      let content, reasoning, calls, finish;
      if (stream) {
        const r = await postSSE(S.baseURL, '/v1/chat/completions', openaiBody(pieces, { stream: true }));
        if (r.status !== 200) { problems.push(`status ${r.status}`); continue; }
        const acc = accumulateChat(r.events.filter((e) => e.json).map((e) => e.json));
        ({ content, reasoning } = acc); calls = acc.toolCalls; finish = acc.finish;
      } else {
        const r = await postJSON(S.baseURL, '/v1/chat/completions', openaiBody(pieces));
        if (r.status !== 200) { problems.push(`status ${r.status}`); continue; }
        const m = r.json.choices[0].message;
        content = m.content ?? ''; reasoning = m.reasoning_content ?? ''; finish = r.json.choices[0].finish_reason;
        calls = (m.tool_calls ?? []).map((c) => ({ name: c.function.name, arguments: c.function.arguments }));
      }
      const tag = stream ? 'stream' : 'non-stream';
      if (finish !== 'length') problems.push(`${tag}: finish_reason ${finish}`);
      if (content.trimEnd() !== CONTENT) problems.push(`${tag}: content ${JSON.stringify(content)}`);
      if (reasoning !== REASONING) problems.push(`${tag}: reasoning ${JSON.stringify(reasoning)}`);
      try { assertNoMarkup(assert, content, 'content'); } catch (e) { problems.push(`${tag}: ${e.message}`); }
      for (const c of calls) {
        // A complete call only once its invoke was complete, with the real arguments. A stream announces a call
        // while it is written (its header, then each parameter's fragment), so a stream cut inside an invoke
        // may hold a started call whose arguments are a true prefix of the real ones (as OpenAI's own streams do
        // at finish_reason "length"): never invented text, never `{}` out of nothing.
        let args;
        try { args = JSON.parse(c.arguments); } catch { args = undefined; }
        const complete = k >= invokeEndByte && JSON.stringify(args) === JSON.stringify(WEATHER_ARGS);
        const startedPrefix = stream && c.name === 'get_weather' && WEATHER_ARGS_TEXT.startsWith(c.arguments) &&
          c.arguments !== '{}' && args === undefined;
        if (!complete && !startedPrefix) {
          problems.push(`${tag}: reported a tool call ${c.name} ${JSON.stringify(c.arguments)} from a cut block`);
        }
      }
    }
    return problems;
  });
  report(results, (i) => `cut at byte ${cuts[i]} (after ${JSON.stringify(Buffer.from(BYTES.slice(BLOCK_START, cuts[i])).toString('utf8').slice(-24))})`);
});

S.test('Anthropic: a cut tool-call block gives stop_reason "max_tokens" and no invented tool_use', async () => {
  const invokeEndByte = Buffer.byteLength(TEXT.slice(0, TEXT.indexOf('</｜DSML｜invoke>') + '</｜DSML｜invoke>'.length));
  const cuts = [BLOCK_START + 2, BLOCK_START + 5, BLOCK_START + 30, BLOCK_START + 90, BYTES.length - Buffer.byteLength(EOS) - 10];
  for (const k of cuts) {
    const r = await postJSON(S.baseURL, '/v1/messages', anthropicBody([BYTES.slice(0, BLOCK_START), BYTES.slice(BLOCK_START, k)]), { headers: ANTHROPIC_HEADERS });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.stop_reason, 'max_tokens', `cut at ${k}`);
    // A tool_use may only come from an invoke that was complete before the cut, with the real input.
    for (const b of r.json.content.filter((x) => x.type === 'tool_use')) {
      assert.ok(k >= invokeEndByte, `cut at ${k} (inside the invoke): ${JSON.stringify(r.json.content)}`);
      assert.deepEqual(b.input, WEATHER_ARGS);
    }
    const text = r.json.content.filter((b) => b.type === 'text').map((b) => b.text).join('');
    assert.equal(text.trimEnd(), CONTENT, `cut at ${k}`);
    assertNoMarkup(assert, text, `text (cut at ${k})`);
  }
});
