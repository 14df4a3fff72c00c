// OpenAI-compatible endpoints of `dsv4 serve`, through the official `openai` SDK and raw fetch.
import assert from 'node:assert/strict';
import {
  useServer, postJSON, postSSE, getJSON, req, collect, accumulateChat, metrics, hook, EOS, MODEL_NAME,
  WEATHER_TOOL_OPENAI, TIME_TOOL_OPENAI, WEATHER_INVOKE, TIME_INVOKE, WEATHER_ARGS, TIME_ARGS, WEATHER_CALL_TEXT,
  dsmlBlock, assertNoMarkup,
} from './support.mjs';

const S = useServer({ hooks: true, args: ['--slots', '2', '--queue', '4', '-c', '2048'], name: 'openai' });
const model = 'anything-goes';
const HELLO = [{ role: 'user', content: 'Hello! How are you today?' }];

// Checks the chunk-level stream contract; returns the accumulated message.
function checkChunks(chunks, { usageChunk = false } = {}) {
  assert.ok(chunks.length >= 2, `too few chunks: ${chunks.length}`);
  const acc = accumulateChat(chunks);
  assert.deepEqual(acc.problems, []);
  assert.equal(acc.ids.size, 1, `one id across all chunks, got ${[...acc.ids]}`);
  const id = [...acc.ids][0];
  assert.equal(typeof id, 'string');
  assert.ok(id.length > 0);
  for (const ch of chunks) {
    assert.equal(ch.object, 'chat.completion.chunk');
    assert.equal(typeof ch.created, 'number');
    assert.equal(typeof ch.model, 'string');
  }
  assert.deepEqual(acc.roles, [0], 'delta.role appears in the first chunk only');
  assert.equal(chunks[0].choices[0].delta.role, 'assistant');
  // Reasoning deltas all come before the first content / tool-call delta.
  const firstNonReasoning = acc.order.findIndex((x) => x !== 'r');
  if (firstNonReasoning >= 0) assert.ok(!acc.order.slice(firstNonReasoning).includes('r'), `reasoning after content: ${acc.order.join('')}`);
  assert.ok(acc.finish, 'a finish_reason in the last choice chunk');
  // finish_reason only on the last chunk that has choices.
  const withChoices = chunks.filter((c) => c.choices && c.choices.length);
  for (const c of withChoices.slice(0, -1)) assert.equal(c.choices[0].finish_reason ?? null, null);
  for (const c of withChoices) assert.equal(c.choices[0].index, 0);
  if (usageChunk) {
    const last = chunks[chunks.length - 1];
    assert.ok(last.usage, 'the last chunk carries usage');
    assert.deepEqual(last.choices, [], 'the usage chunk has empty choices');
    for (const c of chunks.slice(0, -1)) assert.ok(c.usage == null, 'usage only in the final chunk');
  } else {
    for (const c of chunks) assert.ok(c.usage == null, 'no usage without stream_options.include_usage');
  }
  return acc;
}

function checkUsage(u) {
  assert.equal(typeof u.prompt_tokens, 'number');
  assert.equal(typeof u.completion_tokens, 'number');
  assert.ok(u.prompt_tokens > 0);
  assert.equal(u.total_tokens, u.prompt_tokens + u.completion_tokens);
  assert.equal(typeof u.prompt_tokens_details?.cached_tokens, 'number');
  assert.ok(u.prompt_tokens_details.cached_tokens >= 0 && u.prompt_tokens_details.cached_tokens <= u.prompt_tokens);
  assert.equal(typeof u.completion_tokens_details?.reasoning_tokens, 'number');
  assert.ok(u.completion_tokens_details.reasoning_tokens <= u.completion_tokens);
}

S.test('GET /health is 200 {"status":"ok"} once loaded', async () => {
  const r = await getJSON(S.baseURL, '/health');
  assert.equal(r.status, 200);
  assert.deepEqual(r.json, { status: 'ok' });
  // Every /health answer seen while starting was 503 {"status":"loading"} or the final 200.
  for (const [status, body] of S.server.healthSeen) {
    if (status === 503) assert.equal(JSON.parse(body).status, 'loading');
    else if (status !== 0) assert.equal(status, 200);
  }
});

S.test('GET /v1/models lists the embedded model (raw and SDK)', async () => {
  const r = await getJSON(S.baseURL, '/v1/models');
  assert.equal(r.status, 200);
  assert.equal(r.json.object, 'list');
  assert.equal(r.json.data.length, 1);
  const m = r.json.data[0];
  assert.equal(m.id, MODEL_NAME);
  assert.equal(m.object, 'model');
  assert.equal(typeof m.created, 'number');
  assert.equal(m.owned_by, 'dsv4');
  const ids = [];
  for await (const x of S.openai.models.list()) ids.push(x.id);
  assert.deepEqual(ids, [MODEL_NAME]);
});

S.test('non-streaming chat completion from the real model', async () => {
  const r = await S.openai.chat.completions.create({ model, messages: HELLO, temperature: 0, max_tokens: 16 });
  assert.equal(r.object, 'chat.completion');
  assert.match(r.id, /\S/);
  assert.equal(r.choices.length, 1);
  const c = r.choices[0];
  assert.equal(c.index, 0);
  assert.equal(c.message.role, 'assistant');
  assert.equal(typeof c.message.content, 'string');
  assert.ok(c.message.content.length > 0, 'some text');
  assert.ok(['stop', 'length'].includes(c.finish_reason), c.finish_reason);
  assert.ok(!c.message.tool_calls || c.message.tool_calls.length === 0);
  checkUsage(r.usage);
  assert.ok(r.usage.completion_tokens >= 1 && r.usage.completion_tokens <= 16);
  assert.equal(r.usage.completion_tokens_details.reasoning_tokens, 0, 'thinking is off by default');
  assert.ok(!c.message.reasoning_content, 'no reasoning_content when thinking is off');
  assertNoMarkup(assert, c.message.content, 'content');
});

S.test('stream == non-stream at temperature 0 (real model), usage chunk, one id, role once', async () => {
  const body = { model, messages: HELLO, temperature: 0, max_tokens: 16 };
  const full = await S.openai.chat.completions.create(body);
  const chunks = await collect(await S.openai.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }));
  const acc = checkChunks(chunks, { usageChunk: true });
  assert.equal(acc.content, full.choices[0].message.content);
  assert.equal(acc.finish, full.choices[0].finish_reason);
  checkUsage(acc.usage);
  assert.equal(acc.usage.prompt_tokens, full.usage.prompt_tokens);
  assert.equal(acc.usage.completion_tokens, full.usage.completion_tokens);
  assert.equal(acc.usage.total_tokens, full.usage.total_tokens);
  // And once more without include_usage: same text, no usage anywhere.
  const chunks2 = await collect(await S.openai.chat.completions.create({ ...body, stream: true }));
  const acc2 = checkChunks(chunks2, { usageChunk: false });
  assert.equal(acc2.content, full.choices[0].message.content);
});

S.test('raw SSE body: text/event-stream, data: lines only, ends with data: [DONE]', async () => {
  const r = await postSSE(S.baseURL, '/v1/chat/completions', {
    model, messages: HELLO, temperature: 0, max_tokens: 8, stream: true, stream_options: { include_usage: true },
  });
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') || '', /^text\/event-stream/);
  assert.match(r.text, /data: \[DONE\]\s*$/, 'the body ends with data: [DONE]');
  assert.ok(r.text.trimEnd().endsWith('data: [DONE]'));
  const ev = r.events;
  assert.equal(ev[ev.length - 1].data, '[DONE]');
  assert.equal(ev.filter((e) => e.data === '[DONE]').length, 1, 'exactly one [DONE]');
  for (const e of ev.slice(0, -1)) assert.ok(e.json, `every other event is JSON: ${e.data}`);
  checkChunks(ev.slice(0, -1).map((e) => e.json), { usageChunk: true });
});

S.test('thinking mode (real model): reasoning_content streamed before content', async () => {
  const body = { model, messages: [{ role: 'user', content: 'What is 12 plus 7?' }], temperature: 0, max_tokens: 64, thinking: { type: 'enabled' } };
  const full = await S.openai.chat.completions.create(body);
  const chunks = await collect(await S.openai.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }));
  const acc = checkChunks(chunks, { usageChunk: true });
  const m = full.choices[0].message;
  assert.equal(acc.reasoning, m.reasoning_content ?? '');
  assert.equal(acc.content, m.content ?? '');
  assert.ok(acc.reasoning.length > 0, 'the tiny model writes some reasoning in thinking mode');
  assert.ok(full.usage.completion_tokens_details.reasoning_tokens > 0, 'reasoning_tokens counted');
  assertNoMarkup(assert, acc.reasoning, 'reasoning');
  assert.ok(!acc.reasoning.includes('</think>') && !acc.content.includes('</think>'));
});

S.test('thinking mode (scripted): reasoning, then content; reasoning_effort also switches it on', async () => {
  const pieces = ['The user', ' greets me.', '</think>', 'Hello', ' there!', EOS];
  for (const toggle of [{ thinking: { type: 'enabled' } }, { reasoning_effort: 'high' }, { reasoning_effort: 'low' }]) {
    const body = { model, messages: HELLO, max_tokens: 64, ...toggle, ...hook(pieces) };
    const full = await S.openai.chat.completions.create(body);
    const m = full.choices[0].message;
    assert.equal(m.reasoning_content, 'The user greets me.', JSON.stringify(toggle));
    assert.equal(m.content, 'Hello there!');
    assert.equal(full.choices[0].finish_reason, 'stop');
    assert.equal(full.usage.completion_tokens, pieces.length, 'one completion token per piece');
    assert.ok(full.usage.completion_tokens_details.reasoning_tokens > 0);
    const chunks = await collect(await S.openai.chat.completions.create({ ...body, stream: true }));
    const acc = checkChunks(chunks);
    assert.equal(acc.reasoning, 'The user greets me.');
    assert.equal(acc.content, 'Hello there!');
    assert.equal(acc.finish, 'stop');
    assert.ok(acc.order.indexOf('r') === 0 && acc.order.lastIndexOf('r') < acc.order.indexOf('c'));
  }
});

S.test('thinking off: the same raw text is all content (no reasoning split)', async () => {
  const r = await S.openai.chat.completions.create({ model, messages: HELLO, max_tokens: 16, ...hook(['Plain', ' answer.', EOS]) });
  assert.equal(r.choices[0].message.content, 'Plain answer.');
  assert.ok(!r.choices[0].message.reasoning_content);
  assert.equal(r.choices[0].finish_reason, 'stop');
});

S.test('length limit: max_tokens 3 -> finish_reason "length", completion_tokens 3 (real model, both modes)', async () => {
  const body = { model, messages: [{ role: 'user', content: 'Tell me about the state of the union.' }], temperature: 0, max_tokens: 3 };
  const r = await S.openai.chat.completions.create(body);
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 3);
  const acc = checkChunks(await collect(await S.openai.chat.completions.create({ ...body, stream: true, stream_options: { include_usage: true } })), { usageChunk: true });
  assert.equal(acc.finish, 'length');
  assert.equal(acc.usage.completion_tokens, 3);
  assert.equal(acc.content, r.choices[0].message.content);
  // max_completion_tokens is the newer name of the same limit.
  const r2 = await S.openai.chat.completions.create({ model, messages: body.messages, temperature: 0, max_completion_tokens: 3 });
  assert.equal(r2.choices[0].finish_reason, 'length');
  assert.equal(r2.usage.completion_tokens, 3);
});

S.test('scripted pieces that run out without EOS end with finish_reason "length"', async () => {
  const r = await S.openai.chat.completions.create({ model, messages: HELLO, max_tokens: 64, ...hook(['One', ' two', ' three']) });
  assert.equal(r.choices[0].message.content, 'One two three');
  assert.equal(r.choices[0].finish_reason, 'length');
  assert.equal(r.usage.completion_tokens, 3);
});

S.test('stop sequences cut the text (scripted, stop split across pieces)', async () => {
  const pieces = ['Hello', ' world', '.', 'ST', 'OP', ' never', ' seen', EOS];
  const body = { model, messages: HELLO, max_tokens: 64, stop: ['STOP'], ...hook(pieces) };
  const r = await S.openai.chat.completions.create(body);
  assert.equal(r.choices[0].message.content, 'Hello world.');
  assert.equal(r.choices[0].finish_reason, 'stop');
  const acc = checkChunks(await collect(await S.openai.chat.completions.create({ ...body, stream: true })));
  assert.equal(acc.content, 'Hello world.');
  assert.equal(acc.finish, 'stop');
  // A plain string is accepted for `stop` too.
  const r2 = await S.openai.chat.completions.create({ ...body, stop: 'STOP' });
  assert.equal(r2.choices[0].message.content, 'Hello world.');
});

S.test('messages in other accepted shapes: content parts, system and developer roles', async () => {
  const r = await S.openai.chat.completions.create({
    model, max_tokens: 4, temperature: 0,
    messages: [
      { role: 'system', content: 'You are terse.' },
      { role: 'developer', content: [{ type: 'text', text: 'Answer briefly.' }] },
      { role: 'user', content: [{ type: 'text', text: 'Hello' }, { type: 'text', text: ' there' }] },
    ],
  });
  assert.equal(r.choices[0].message.role, 'assistant');
  assert.ok(r.usage.prompt_tokens > 0);
});

// --- tool calls --------------------------------------------------------------------------------------------

S.test('tool call (scripted): non-stream message.tool_calls and finish_reason "tool_calls"', async () => {
  const pieces = ['Let me check.', WEATHER_CALL_TEXT];
  const r = await S.openai.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [WEATHER_TOOL_OPENAI], max_tokens: 64, ...hook(pieces),
  });
  const c = r.choices[0];
  assert.equal(c.finish_reason, 'tool_calls');
  assert.equal(c.message.content, 'Let me check.');
  assert.equal(c.message.tool_calls.length, 1);
  const tc = c.message.tool_calls[0];
  assert.match(tc.id, /^call_/);
  assert.equal(tc.type, 'function');
  assert.equal(tc.function.name, 'get_weather');
  assert.equal(typeof tc.function.arguments, 'string');
  assert.deepEqual(JSON.parse(tc.function.arguments), WEATHER_ARGS);
});

S.test('tool_choice names a function (chat mode): the prompt opens its call, the reply continues it', async () => {
  // The server ends the prompt with the opening of the named call; the scripted model writes only the rest.
  const rest = '<｜DSML｜parameter name="city" string="true">Paris</｜DSML｜parameter>\n<｜DSML｜parameter name="days" string="false">3</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls>' + EOS;
  const body = {
    model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [WEATHER_TOOL_OPENAI, TIME_TOOL_OPENAI],
    tool_choice: { type: 'function', function: { name: 'get_weather' } }, max_tokens: 64, ...hook([rest]),
  };
  for (const stream of [false, true]) {
    let calls, finish;
    if (stream) {
      const acc = accumulateChat(await collect(await S.openai.chat.completions.create({ ...body, stream: true })));
      calls = acc.toolCalls; finish = acc.finish;
    } else {
      const r = await S.openai.chat.completions.create(body);
      calls = r.choices[0].message.tool_calls.map((c) => c.function); finish = r.choices[0].finish_reason;
    }
    assert.equal(finish, 'tool_calls', `stream ${stream}`);
    assert.equal(calls.length, 1);
    assert.equal(calls[0].name, 'get_weather');
    assert.deepEqual(JSON.parse(calls[0].arguments), WEATHER_ARGS);
  }
  const r = await postJSON(S.baseURL, '/v1/chat/completions', { ...body, tool_choice: { type: 'function', function: { name: 'nope' } } });
  assert.equal(r.status, 400);
});

S.test('tool-call deltas: header chunk (index, id, type, name, arguments ""), then argument fragments', async () => {
  // Byte-sized pieces so that the arguments must be streamed in several fragments.
  const text = 'Checking.' + WEATHER_CALL_TEXT;
  const pieces = Array.from(text).reduce((a, ch, i) => { if (i % 7 === 0) a.push(''); a[a.length - 1] += ch; return a; }, []);
  const chunks = await collect(await S.openai.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [WEATHER_TOOL_OPENAI], max_tokens: 400, stream: true, ...hook(pieces),
  }));
  const acc = checkChunks(chunks);
  assert.equal(acc.finish, 'tool_calls');
  assert.equal(acc.content, 'Checking.');
  assert.equal(acc.toolCalls.length, 1);
  assert.deepEqual(JSON.parse(acc.toolCalls[0].arguments), WEATHER_ARGS);
  assert.equal(acc.toolCalls[0].name, 'get_weather');
  assert.match(acc.toolCalls[0].id, /^call_/);
  const tcDeltas = chunks.flatMap((c) => (c.choices[0]?.delta?.tool_calls ?? []));
  const head = tcDeltas[0];
  assert.equal(head.index, 0);
  assert.match(head.id, /^call_/);
  assert.equal(head.type, 'function');
  assert.equal(head.function.name, 'get_weather');
  assert.equal(head.function.arguments, '');
  const rest = tcDeltas.slice(1);
  assert.ok(rest.length >= 1, 'argument fragments follow the header');
  for (const d of rest) {
    assert.equal(d.index, 0);
    assert.equal(d.function.name, undefined, 'name only in the header delta');
    assert.equal(typeof d.function.arguments, 'string');
  }
  // The SDK's stream helper accumulates the same call.
  const s = S.openai.chat.completions.stream({
    model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [WEATHER_TOOL_OPENAI], max_tokens: 400, ...hook(pieces),
  });
  const fin = await s.finalChatCompletion();
  assert.equal(fin.choices[0].finish_reason, 'tool_calls');
  assert.deepEqual(JSON.parse(fin.choices[0].message.tool_calls[0].function.arguments), WEATHER_ARGS);
});

S.test('tool-call arguments are streamed as the parameters arrive (more than one fragment)', async () => {
  // The call's two parameters arrive 100 ms apart: the first parameter's fragment can be sent before the
  // second is generated (the contract: "then chunks with delta.tool_calls[{index, function:{arguments:
  // fragment}}]").
  const [head, tail] = WEATHER_CALL_TEXT.split('<｜DSML｜parameter name="days"');
  const pieces = ['Checking.', head, '<｜DSML｜parameter name="days"' + tail];
  const chunks = [];
  const stream = await S.openai.chat.completions.create({
    model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools: [WEATHER_TOOL_OPENAI], max_tokens: 400, stream: true, ...hook(pieces, 100),
  });
  for await (const c of stream) chunks.push(c);
  const acc = checkChunks(chunks);
  assert.equal(acc.finish, 'tool_calls');
  assert.deepEqual(JSON.parse(acc.toolCalls[0].arguments), WEATHER_ARGS);
  const argDeltas = chunks.filter((c) => (c.choices[0]?.delta?.tool_calls ?? []).some((t) => t.function?.arguments));
  assert.ok(argDeltas.length >= 2, `arguments in several fragments (got ${argDeltas.length} non-empty fragment(s): ${JSON.stringify(argDeltas.map((c) => c.choices[0].delta.tool_calls[0].function.arguments))})`);
});

S.test('two parallel tool calls: stable indexes 0 and 1, distinct ids, both arguments intact', async () => {
  const text = 'Both.' + dsmlBlock([WEATHER_INVOKE, TIME_INVOKE]) + EOS;
  const pieces = Array.from(text).reduce((a, ch, i) => { if (i % 5 === 0) a.push(''); a[a.length - 1] += ch; return a; }, []);
  const body = { model, messages: [{ role: 'user', content: 'Weather and time in Paris and Tokyo?' }], tools: [WEATHER_TOOL_OPENAI, TIME_TOOL_OPENAI], max_tokens: 400, ...hook(pieces) };
  const full = await S.openai.chat.completions.create(body);
  const calls = full.choices[0].message.tool_calls;
  assert.equal(full.choices[0].finish_reason, 'tool_calls');
  assert.equal(calls.length, 2);
  assert.deepEqual(calls.map((c) => c.function.name), ['get_weather', 'get_time']);
  assert.deepEqual(JSON.parse(calls[0].function.arguments), WEATHER_ARGS);
  assert.deepEqual(JSON.parse(calls[1].function.arguments), TIME_ARGS);
  assert.notEqual(calls[0].id, calls[1].id);

  const chunks = await collect(await S.openai.chat.completions.create({ ...body, stream: true }));
  const acc = checkChunks(chunks);
  assert.equal(acc.finish, 'tool_calls');
  assert.deepEqual(acc.headerOrder, [0, 1], 'call 0 starts before call 1');
  assert.equal(acc.toolCalls.length, 2);
  assert.deepEqual(acc.toolCalls.map((c) => c.name), ['get_weather', 'get_time']);
  assert.deepEqual(JSON.parse(acc.toolCalls[0].arguments), WEATHER_ARGS);
  assert.deepEqual(JSON.parse(acc.toolCalls[1].arguments), TIME_ARGS);
  assert.notEqual(acc.toolCalls[0].id, acc.toolCalls[1].id);
  // Once call 1 has started, no more fragments for call 0 (calls are streamed one after the other).
  const idxSeq = chunks.flatMap((c) => (c.choices[0]?.delta?.tool_calls ?? []).map((t) => t.index));
  assert.deepEqual(idxSeq, [...idxSeq].sort((a, b) => a - b), `indexes in order: ${idxSeq.join(',')}`);
});

S.test('tool round trip with the real model (calculator), then the answer', async () => {
  const tools = [
    { type: 'function', function: { name: 'calculator', description: 'Evaluate an arithmetic expression', parameters: { type: 'object', properties: { expression: { type: 'string', description: 'The expression, for example 12 * (3 + 4)' } }, required: ['expression'] } } },
    { type: 'function', function: { name: 'convert_units', description: 'Convert a quantity from one unit to another', parameters: { type: 'object', properties: { value: { type: 'number', description: 'The quantity to convert' }, from_unit: { type: 'string', description: 'The unit of the value' }, to_unit: { type: 'string', description: 'The unit wanted' } }, required: ['value', 'from_unit', 'to_unit'] } } },
  ];
  const messages = [
    { role: 'system', content: 'You are a helpful assistant with a calculator and a unit converter.' },
    { role: 'user', content: 'What is 1234 times 56?' },
  ];
  const r1 = await S.openai.chat.completions.create({ model, messages, tools, temperature: 0, max_tokens: 120 });
  const m1 = r1.choices[0].message;
  assert.equal(r1.choices[0].finish_reason, 'tool_calls', `the model calls the calculator; got ${JSON.stringify(m1)}`);
  assert.equal(m1.tool_calls[0].function.name, 'calculator');
  const args = JSON.parse(m1.tool_calls[0].function.arguments);
  assert.equal(typeof args.expression, 'string');
  assertNoMarkup(assert, m1.content ?? '', 'content');
  // Stream of the same request gives the same call.
  const acc = checkChunks(await collect(await S.openai.chat.completions.create({ model, messages, tools, temperature: 0, max_tokens: 120, stream: true })));
  assert.equal(acc.finish, 'tool_calls');
  assert.equal(acc.toolCalls[0].name, 'calculator');
  assert.equal(acc.toolCalls[0].arguments, m1.tool_calls[0].function.arguments);

  const result = '69104';
  const r2 = await S.openai.chat.completions.create({
    model, tools, temperature: 0, max_tokens: 60,
    messages: [...messages, m1, { role: 'tool', tool_call_id: m1.tool_calls[0].id, content: result }],
  });
  const m2 = r2.choices[0].message;
  assert.ok(!m2.tool_calls || m2.tool_calls.length === 0, `no second call: ${JSON.stringify(m2)}`);
  assert.equal(r2.choices[0].finish_reason, 'stop');
  assert.ok(m2.content.includes(result), `the answer uses the tool result: ${JSON.stringify(m2.content)}`);
});

S.test('tool round trip (scripted, thinking): reasoning passed back, omitted, "" or as `reasoning` all succeed', async () => {
  const tools = [WEATHER_TOOL_OPENAI];
  const user = { role: 'user', content: 'Weather in Paris?' };
  const r1 = await S.openai.chat.completions.create({
    model, messages: [user], tools, max_tokens: 64, thinking: { type: 'enabled' },
    ...hook(['I should call the tool.', '</think>', WEATHER_CALL_TEXT]),
  });
  const m1 = r1.choices[0].message;
  assert.equal(m1.reasoning_content, 'I should call the tool.');
  assert.equal(r1.choices[0].finish_reason, 'tool_calls');
  const call = m1.tool_calls[0];
  const toolMsg = { role: 'tool', tool_call_id: call.id, content: '{"forecast": "sunny", "high_c": 21}' };
  const base = { role: 'assistant', content: m1.content ?? '', tool_calls: m1.tool_calls };
  const variants = {
    passed_back: { ...base, reasoning_content: m1.reasoning_content },
    omitted: { ...base },
    empty: { ...base, reasoning_content: '' },
    as_reasoning: { ...base, reasoning: m1.reasoning_content },
    content_null: { role: 'assistant', content: null, tool_calls: m1.tool_calls },
  };
  const prompts = {};
  for (const [name, asst] of Object.entries(variants)) {
    const r = await postJSON(S.baseURL, '/v1/chat/completions', {
      model, tools, max_tokens: 64, thinking: { type: 'enabled' }, messages: [user, asst, toolMsg],
      ...hook(['It is sunny.', '</think>', 'Sunny, 21 °C.', EOS]),
    });
    assert.equal(r.status, 200, `${name}: ${r.text}`);
    assert.equal(r.json.choices[0].message.content, 'Sunny, 21 °C.', name);
    assert.equal(r.json.choices[0].finish_reason, 'stop', name);
    prompts[name] = r.json.usage.prompt_tokens;
  }
  // The server restores the kept reasoning: all variants render the same prompt.
  assert.equal(prompts.omitted, prompts.passed_back, JSON.stringify(prompts));
  assert.equal(prompts.empty, prompts.passed_back, JSON.stringify(prompts));
  assert.equal(prompts.as_reasoning, prompts.passed_back, JSON.stringify(prompts));
  // A streamed follow-up works the same.
  const acc = checkChunks(await collect(await S.openai.chat.completions.create({
    model, tools, max_tokens: 64, thinking: { type: 'enabled' }, messages: [user, variants.omitted, toolMsg], stream: true,
    ...hook(['Sunny.', '</think>', 'Sunny.', EOS]),
  })));
  assert.equal(acc.content, 'Sunny.');
  assert.equal(acc.reasoning, 'Sunny.');
});

S.test('undeclared tool name is not reported as a tool call', async () => {
  const text = 'Launching.' + dsmlBlock([`<｜DSML｜invoke name="launch_rocket">\n${'<｜DSML｜parameter name="target" string="true">moon</｜DSML｜parameter>'}\n</｜DSML｜invoke>`]) + EOS;
  const body = { model, messages: [{ role: 'user', content: 'Go.' }], tools: [WEATHER_TOOL_OPENAI], max_tokens: 64, ...hook([text]) };
  const r = await S.openai.chat.completions.create(body);
  const m = r.choices[0].message;
  assert.ok(!m.tool_calls || m.tool_calls.length === 0, JSON.stringify(m.tool_calls));
  assert.notEqual(r.choices[0].finish_reason, 'tool_calls');
  assert.ok((m.content ?? '').includes('launch_rocket'), `the text stays in the content: ${JSON.stringify(m.content)}`);
  assertNoMarkup(assert, m.content ?? '', 'content');
  const acc = checkChunks(await collect(await S.openai.chat.completions.create({ ...body, stream: true })));
  assert.equal(acc.toolCalls.length, 0);
  assert.notEqual(acc.finish, 'tool_calls');
  assert.ok(acc.content.includes('launch_rocket'));
});

S.test('tool_choice "none": no tool call reported even if the text has one', async () => {
  const body = { model, messages: [{ role: 'user', content: 'Weather?' }], tools: [WEATHER_TOOL_OPENAI], tool_choice: 'none', max_tokens: 64, ...hook(['Fine.', WEATHER_CALL_TEXT]) };
  const r = await S.openai.chat.completions.create(body);
  assert.ok(!r.choices[0].message.tool_calls || r.choices[0].message.tool_calls.length === 0);
  assert.notEqual(r.choices[0].finish_reason, 'tool_calls');
  const acc = checkChunks(await collect(await S.openai.chat.completions.create({ ...body, stream: true })));
  assert.equal(acc.toolCalls.length, 0);
  assert.notEqual(acc.finish, 'tool_calls');
});

// --- legacy completions, responses, tokenizer, metrics -----------------------------------------------------

S.test('/v1/completions: non-stream and stream agree at temperature 0', async () => {
  const body = { model, prompt: 'Mr. Speaker, the state of our union is', temperature: 0, max_tokens: 12 };
  const r = await S.openai.completions.create(body);
  assert.equal(r.object, 'text_completion');
  assert.equal(r.choices.length, 1);
  assert.equal(typeof r.choices[0].text, 'string');
  assert.ok(r.choices[0].text.length > 0);
  assert.ok(['stop', 'length'].includes(r.choices[0].finish_reason));
  assert.equal(r.usage.total_tokens, r.usage.prompt_tokens + r.usage.completion_tokens);
  assert.ok(r.usage.completion_tokens <= 12 && r.usage.completion_tokens > 0);
  const chunks = await collect(await S.openai.completions.create({ ...body, stream: true, stream_options: { include_usage: true } }));
  const ids = new Set(chunks.map((c) => c.id));
  assert.equal(ids.size, 1);
  const text = chunks.map((c) => c.choices?.[0]?.text ?? '').join('');
  assert.equal(text, r.choices[0].text);
  const fin = chunks.map((c) => c.choices?.[0]?.finish_reason).filter(Boolean);
  assert.deepEqual(fin, [r.choices[0].finish_reason]);
  const usage = chunks.find((c) => c.usage)?.usage;
  assert.ok(usage, 'usage chunk');
  assert.equal(usage.completion_tokens, r.usage.completion_tokens);
  // Raw body ends with [DONE].
  const raw = await postSSE(S.baseURL, '/v1/completions', { ...body, stream: true });
  assert.equal(raw.status, 200);
  assert.ok(raw.text.trimEnd().endsWith('data: [DONE]'));
  // max_tokens 3 -> length.
  const r3 = await S.openai.completions.create({ ...body, max_tokens: 3 });
  assert.equal(r3.choices[0].finish_reason, 'length');
  assert.equal(r3.usage.completion_tokens, 3);
});

S.test('/v1/responses streaming through the SDK: created, output_text.delta, completed', async () => {
  const stream = await S.openai.responses.create({ model, input: 'Hello! How are you today?', max_output_tokens: 16, temperature: 0, stream: true });
  const events = await collect(stream);
  const types = events.map((e) => e.type);
  assert.equal(types[0], 'response.created', types.join(' '));
  assert.equal(types[types.length - 1], 'response.completed', types.join(' '));
  const deltas = events.filter((e) => e.type === 'response.output_text.delta');
  assert.ok(deltas.length >= 1, 'some text deltas');
  const text = deltas.map((e) => e.delta).join('');
  assert.ok(text.length > 0);
  const done = events[events.length - 1].response;
  assert.equal(done.status, 'completed');
  assert.equal(done.object, 'response');
  assert.equal(done.id, events[0].response.id, 'one response id');
  const msg = done.output.find((o) => o.type === 'message');
  assert.ok(msg, JSON.stringify(done.output));
  const outText = msg.content.filter((c) => c.type === 'output_text').map((c) => c.text).join('');
  assert.equal(outText, text, 'the completed response holds the streamed text');
  assert.ok(done.usage.input_tokens > 0);
  assert.equal(done.usage.output_tokens > 0, true);
  if (deltas.some((e) => e.sequence_number !== undefined)) {
    const seq = events.map((e) => e.sequence_number);
    for (let i = 1; i < seq.length; i++) assert.ok(seq[i] > seq[i - 1], 'sequence_number increases');
  }
  // Non-streaming gives the same text at temperature 0.
  const r = await S.openai.responses.create({ model, input: 'Hello! How are you today?', max_output_tokens: 16, temperature: 0 });
  assert.equal(r.status, 'completed');
  assert.equal(r.output_text, text);
});

S.test('/tokenize and /detokenize round trip', async () => {
  const content = 'Mr. Speaker, the state of our union is strong. Ünïcödé ｜ 東京 🙂';
  const t = await postJSON(S.baseURL, '/tokenize', { content });
  assert.equal(t.status, 200, t.text);
  assert.ok(Array.isArray(t.json.tokens) && t.json.tokens.length > 5);
  for (const id of t.json.tokens) assert.ok(Number.isInteger(id) && id >= 0 && id < 4096, `token id ${id}`);
  const d = await postJSON(S.baseURL, '/detokenize', { tokens: t.json.tokens });
  assert.equal(d.status, 200, d.text);
  assert.equal(d.json.content, content);
  const e = await postJSON(S.baseURL, '/tokenize', { content: '' });
  assert.equal(e.status, 200);
  assert.deepEqual(e.json.tokens, []);
});

S.test('/metrics: Prometheus text with the dsv4 series; counters follow a request', async () => {
  const r = await req(S.baseURL, 'GET', '/metrics');
  assert.equal(r.status, 200);
  assert.match(r.headers.get('content-type') || '', /^text\/plain/);
  for (const name of ['dsv4_requests_total', 'dsv4_queue_depth', 'dsv4_active_sequences', 'dsv4_prompt_tokens_total', 'dsv4_generated_tokens_total', 'dsv4_cached_tokens_total']) {
    assert.match(r.text, new RegExp(`^${name}(\\{[^}]*\\})? [0-9.eE+-]+$`, 'm'), `${name} sample`);
  }
  const m0 = await metrics(S.baseURL);
  const c = await S.openai.chat.completions.create({ model, messages: HELLO, temperature: 0, max_tokens: 5 });
  const m1 = await metrics(S.baseURL);
  assert.ok(m1.get('dsv4_requests_total') >= m0.get('dsv4_requests_total') + 1);
  assert.equal(m1.get('dsv4_prompt_tokens_total') - m0.get('dsv4_prompt_tokens_total'), c.usage.prompt_tokens);
  assert.equal(m1.get('dsv4_generated_tokens_total') - m0.get('dsv4_generated_tokens_total'), c.usage.completion_tokens);
  assert.equal(m1.get('dsv4_active_sequences'), 0);
  assert.equal(m1.get('dsv4_queue_depth'), 0);
});

S.test('repeated prompt: cached_tokens is consistent with the metrics counter', async () => {
  const messages = [{ role: 'user', content: 'Tell me about the state of the union in the year 1862, and about the war.' }];
  const m0 = await metrics(S.baseURL);
  const a = await S.openai.chat.completions.create({ model, messages, temperature: 0, max_tokens: 2 });
  const b = await S.openai.chat.completions.create({ model, messages, temperature: 0, max_tokens: 2 });
  const m1 = await metrics(S.baseURL);
  assert.equal(a.usage.prompt_tokens, b.usage.prompt_tokens);
  const cached = a.usage.prompt_tokens_details.cached_tokens + b.usage.prompt_tokens_details.cached_tokens;
  assert.equal(m1.get('dsv4_cached_tokens_total') - m0.get('dsv4_cached_tokens_total'), cached);
  assert.equal(a.choices[0].message.content, b.choices[0].message.content, 'a cache hit gives the same greedy output');
});
