// Anthropic-compatible /v1/messages of `dsv4 serve`, through the official `@anthropic-ai/sdk` and raw fetch.
import assert from 'node:assert/strict';
import {
  useServer, postJSON, postSSE, collect, hook, EOS, WEATHER_TOOL_ANTHROPIC, TIME_TOOL_ANTHROPIC, WEATHER_INVOKE,
  TIME_INVOKE, WEATHER_ARGS, TIME_ARGS, WEATHER_CALL_TEXT, dsmlBlock, assertNoMarkup, chunkString,
} from './support.mjs';

const S = useServer({ hooks: true, args: ['--slots', '2', '--queue', '4', '-c', '2048'], name: 'anthropic' });
const model = 'claude-any-name';
const HELLO = [{ role: 'user', content: 'Hello! How are you today?' }];
const ANTHROPIC_HEADERS = { 'anthropic-version': '2023-06-01', 'x-api-key': 'sk-ant-test' };

// Checks the event-level contract of a raw Anthropic stream (parsed SSE events) and returns the message it
// builds: { message, blocks[], stopReason, usage, types[] }.
function checkEvents(events) {
  const evs = events.filter((e) => e.event !== 'ping');
  for (const e of events) {
    assert.ok(e.json, `every event has JSON data: ${e.event} ${e.data}`);
    assert.equal(e.event, e.json.type, 'the SSE event name equals data.type');
  }
  const types = evs.map((e) => e.event);
  assert.equal(types[0], 'message_start', types.join(' '));
  assert.equal(types[types.length - 1], 'message_stop', types.join(' '));
  assert.equal(types[types.length - 2], 'message_delta', types.join(' '));
  assert.equal(types.filter((t) => t === 'message_start').length, 1);
  assert.equal(types.filter((t) => t === 'message_delta').length, 1);
  const start = evs[0].json.message;
  assert.equal(start.type, 'message');
  assert.equal(start.role, 'assistant');
  assert.match(start.id, /^msg_/);
  assert.deepEqual(start.content, []);
  assert.equal(start.stop_reason, null);
  assert.equal(typeof start.usage.input_tokens, 'number');
  assert.ok(start.usage.input_tokens > 0);

  const blocks = [];
  let open = null; // index of the open block
  for (const e of evs.slice(1, -2)) {
    const d = e.json;
    if (e.event === 'content_block_start') {
      assert.equal(open, null, 'a block starts only after the previous one stopped');
      assert.equal(d.index, blocks.length, 'block indexes count up from 0');
      const b = structuredClone(d.content_block);
      if (b.type === 'text') { assert.equal(b.text, ''); }
      if (b.type === 'thinking') { assert.equal(b.thinking, ''); b.signature = b.signature ?? ''; }
      if (b.type === 'tool_use') { assert.match(b.id, /^toolu_/); assert.equal(typeof b.name, 'string'); assert.deepEqual(b.input, {}); b.json = ''; }
      blocks.push(b);
      open = d.index;
    } else if (e.event === 'content_block_delta') {
      assert.equal(d.index, open, 'a delta belongs to the open block');
      const b = blocks[d.index];
      const dt = d.delta.type;
      if (dt === 'text_delta') { assert.equal(b.type, 'text'); b.text += d.delta.text; }
      else if (dt === 'thinking_delta') { assert.equal(b.type, 'thinking'); assert.equal(b.signature, '', 'thinking_delta before signature_delta'); b.thinking += d.delta.thinking; }
      else if (dt === 'signature_delta') { assert.equal(b.type, 'thinking'); assert.ok(d.delta.signature.length > 0); b.signature += d.delta.signature; }
      else if (dt === 'input_json_delta') { assert.equal(b.type, 'tool_use'); b.json += d.delta.partial_json; }
      else assert.fail(`unknown delta type ${dt}`);
    } else if (e.event === 'content_block_stop') {
      assert.equal(d.index, open, 'stop of the open block');
      const b = blocks[d.index];
      if (b.type === 'tool_use') { b.input = b.json === '' ? {} : JSON.parse(b.json); delete b.json; }
      if (b.type === 'thinking') assert.ok(b.signature.length > 0, 'a thinking block gets a signature_delta before its stop');
      open = null;
    } else {
      assert.fail(`unexpected event ${e.event} inside the message`);
    }
  }
  assert.equal(open, null, 'every block stopped before message_delta');
  const md = evs[evs.length - 2].json;
  assert.ok(['end_turn', 'max_tokens', 'tool_use', 'stop_sequence'].includes(md.delta.stop_reason), md.delta.stop_reason);
  assert.equal(typeof md.usage.output_tokens, 'number');
  return { start, blocks, stopReason: md.delta.stop_reason, stopSequence: md.delta.stop_sequence, usage: md.usage, types };
}

async function rawStream(body) {
  const r = await postSSE(S.baseURL, '/v1/messages', { ...body, stream: true }, { headers: ANTHROPIC_HEADERS });
  assert.equal(r.status, 200, r.text);
  assert.match(r.headers.get('content-type') || '', /^text\/event-stream/);
  return checkEvents(r.events);
}

function checkMessage(m) {
  assert.equal(m.type, 'message');
  assert.equal(m.role, 'assistant');
  assert.match(m.id, /^msg_/);
  assert.ok(Array.isArray(m.content));
  assert.equal(typeof m.usage.input_tokens, 'number');
  assert.equal(typeof m.usage.output_tokens, 'number');
  assert.ok(m.usage.input_tokens > 0);
}

S.test('non-streaming message from the real model', async () => {
  const m = await S.anthropic.messages.create({ model, max_tokens: 16, temperature: 0, messages: HELLO });
  checkMessage(m);
  assert.equal(m.content.length, 1, JSON.stringify(m.content));
  assert.equal(m.content[0].type, 'text');
  assert.ok(m.content[0].text.length > 0);
  assert.ok(['end_turn', 'max_tokens'].includes(m.stop_reason));
  assert.equal(m.stop_sequence, null);
  assert.ok(m.usage.output_tokens >= 1 && m.usage.output_tokens <= 16);
  assertNoMarkup(assert, m.content[0].text, 'text');
});

S.test('stream == non-stream at temperature 0 (real model); event order and indexes', async () => {
  const body = { model, max_tokens: 16, temperature: 0, messages: HELLO };
  const m = await S.anthropic.messages.create(body);
  const s = await rawStream(body);
  assert.deepEqual(s.blocks, m.content);
  assert.equal(s.stopReason, m.stop_reason);
  assert.equal(s.usage.output_tokens, m.usage.output_tokens);
  const inTotal = (u) => u.input_tokens + (u.cache_read_input_tokens ?? 0) + (u.cache_creation_input_tokens ?? 0);
  assert.equal(inTotal(s.start.usage), inTotal(m.usage), 'same prompt size streamed and not');
  // The SDK's own accumulation agrees.
  const fin = await S.anthropic.messages.stream(body).finalMessage();
  assert.deepEqual(fin.content, m.content);
  assert.equal(fin.stop_reason, m.stop_reason);
  // And the raw SDK event stream starts/ends as it should.
  const evs = await collect(await S.anthropic.messages.create({ ...body, stream: true }));
  assert.equal(evs[0].type, 'message_start');
  assert.equal(evs[evs.length - 1].type, 'message_stop');
});

S.test('max_tokens 3 -> stop_reason "max_tokens", output_tokens 3 (real model, both modes)', async () => {
  const body = { model, max_tokens: 3, temperature: 0, messages: [{ role: 'user', content: 'Tell me about the state of the union.' }] };
  const m = await S.anthropic.messages.create(body);
  assert.equal(m.stop_reason, 'max_tokens');
  assert.equal(m.usage.output_tokens, 3);
  const s = await rawStream(body);
  assert.equal(s.stopReason, 'max_tokens');
  assert.equal(s.usage.output_tokens, 3);
});

S.test('system prompt as string and as text blocks; content as blocks', async () => {
  for (const system of ['You are terse.', [{ type: 'text', text: 'You are terse.' }]]) {
    const m = await S.anthropic.messages.create({
      model, max_tokens: 4, temperature: 0, system,
      messages: [{ role: 'user', content: [{ type: 'text', text: 'Hello' }] }],
    });
    checkMessage(m);
  }
});

S.test('thinking enabled (scripted): thinking block with signature, then text', async () => {
  const pieces = ['The user', ' says hello.', '</think>', 'Hello', ' there!', EOS];
  const body = { model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: HELLO, ...hook(pieces) };
  const m = await S.anthropic.messages.create(body);
  checkMessage(m);
  assert.equal(m.stop_reason, 'end_turn');
  assert.deepEqual(m.content.map((b) => b.type), ['thinking', 'text']);
  assert.equal(m.content[0].thinking, 'The user says hello.');
  assert.equal(typeof m.content[0].signature, 'string');
  assert.ok(m.content[0].signature.length > 0);
  assert.equal(m.content[1].text, 'Hello there!');
  assert.equal(m.usage.output_tokens, pieces.length);

  const s = await rawStream(body);
  assert.deepEqual(s.blocks.map((b) => b.type), ['thinking', 'text']);
  assert.equal(s.blocks[0].thinking, 'The user says hello.');
  assert.equal(s.blocks[1].text, 'Hello there!');
  assert.equal(s.stopReason, 'end_turn');
  assert.equal(s.usage.output_tokens, pieces.length);
  assert.ok(s.types.includes('content_block_delta'));
  const fin = await S.anthropic.messages.stream(body).finalMessage();
  assert.equal(fin.content[0].type, 'thinking');
  assert.ok(fin.content[0].signature.length > 0);
  assert.equal(fin.content[1].text, 'Hello there!');
});

S.test('thinking "adaptive" is accepted; "disabled" gives text only', async () => {
  const a = await postJSON(S.baseURL, '/v1/messages', { model, max_tokens: 32, thinking: { type: 'adaptive' }, messages: HELLO, ...hook(['Hm.', '</think>', 'Hi.', EOS]) }, { headers: ANTHROPIC_HEADERS });
  assert.equal(a.status, 200, a.text);
  checkMessage(a.json);
  const d = await S.anthropic.messages.create({ model, max_tokens: 32, thinking: { type: 'disabled' }, messages: HELLO, ...hook(['Just text.', EOS]) });
  assert.deepEqual(d.content, [{ type: 'text', text: 'Just text.' }]);
  assert.equal(d.stop_reason, 'end_turn');
});

S.test('thinking (real model): thinking block before text, with signature', async () => {
  const body = { model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [{ role: 'user', content: 'What is 12 plus 7?' }] };
  // The real model writes some reasoning; max_tokens bounds it by the API's own limit, so use a small one
  // via the raw stream only (output is short anyway for this model).
  const s = await rawStream({ ...body, max_tokens: 1100 });
  assert.equal(s.blocks[0].type, 'thinking', JSON.stringify(s.blocks));
  assert.ok(s.blocks[0].thinking.length > 0);
  assertNoMarkup(assert, s.blocks[0].thinking, 'thinking');
  assert.ok(!s.blocks[0].thinking.includes('</think>'));
});

S.test('stop_sequences (scripted): stop_reason "stop_sequence" and the matched sequence', async () => {
  const pieces = ['Hello', ' world', '.', 'ST', 'OP', ' never', EOS];
  const body = { model, max_tokens: 64, stop_sequences: ['STOP', 'HALT'], messages: HELLO, ...hook(pieces) };
  const m = await S.anthropic.messages.create(body);
  assert.equal(m.stop_reason, 'stop_sequence');
  assert.equal(m.stop_sequence, 'STOP');
  assert.deepEqual(m.content, [{ type: 'text', text: 'Hello world.' }]);
  const s = await rawStream(body);
  assert.equal(s.stopReason, 'stop_sequence');
  assert.equal(s.stopSequence, 'STOP');
  assert.equal(s.blocks[0].text, 'Hello world.');
});

S.test('tool_use (scripted): block with toolu_ id and parsed input; stop_reason "tool_use"', async () => {
  const text = 'Let me check.' + WEATHER_CALL_TEXT;
  const body = { model, max_tokens: 512, tools: [WEATHER_TOOL_ANTHROPIC], messages: [{ role: 'user', content: 'Weather in Paris?' }], ...hook(chunkString(text, 6)) };
  const m = await S.anthropic.messages.create(body);
  checkMessage(m);
  assert.equal(m.stop_reason, 'tool_use');
  assert.deepEqual(m.content.map((b) => b.type), ['text', 'tool_use']);
  assert.equal(m.content[0].text, 'Let me check.');
  assert.match(m.content[1].id, /^toolu_/);
  assert.equal(m.content[1].name, 'get_weather');
  assert.deepEqual(m.content[1].input, WEATHER_ARGS);

  const s = await rawStream(body);
  assert.equal(s.stopReason, 'tool_use');
  assert.deepEqual(s.blocks.map((b) => b.type), ['text', 'tool_use']);
  assert.equal(s.blocks[0].text, 'Let me check.');
  assert.equal(s.blocks[1].name, 'get_weather');
  assert.deepEqual(s.blocks[1].input, WEATHER_ARGS);
  const fin = await S.anthropic.messages.stream(body).finalMessage();
  assert.deepEqual(fin.content[1].input, WEATHER_ARGS);
});

S.test('two parallel tool_use blocks with indexes 1 and 2 (thinking on: thinking is index 0)', async () => {
  const text = 'Two calls needed.</think>' + dsmlBlock([WEATHER_INVOKE, TIME_INVOKE]) + EOS;
  const body = {
    model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, tools: [WEATHER_TOOL_ANTHROPIC, TIME_TOOL_ANTHROPIC],
    messages: [{ role: 'user', content: 'Weather in Paris and time in Tokyo?' }], ...hook(chunkString(text, 4)),
  };
  const m = await S.anthropic.messages.create(body);
  assert.equal(m.stop_reason, 'tool_use');
  assert.deepEqual(m.content.map((b) => b.type), ['thinking', 'tool_use', 'tool_use']);
  assert.deepEqual(m.content[1].input, WEATHER_ARGS);
  assert.deepEqual(m.content[2].input, TIME_ARGS);
  assert.notEqual(m.content[1].id, m.content[2].id);
  const s = await rawStream(body);
  assert.deepEqual(s.blocks.map((b) => b.type), ['thinking', 'tool_use', 'tool_use']);
  assert.equal(s.blocks[0].thinking, 'Two calls needed.');
  assert.deepEqual(s.blocks.slice(1).map((b) => [b.name, b.input]), [['get_weather', WEATHER_ARGS], ['get_time', TIME_ARGS]]);
});

S.test('tool round trip (scripted, thinking): thinking block passed back, omitted, or empty; tool_result with is_error', async () => {
  const tools = [WEATHER_TOOL_ANTHROPIC];
  const user = { role: 'user', content: 'Weather in Paris?' };
  const m1 = await S.anthropic.messages.create({
    model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, tools, messages: [user],
    ...hook(['I should call the tool.', '</think>', WEATHER_CALL_TEXT]),
  });
  assert.equal(m1.stop_reason, 'tool_use');
  const toolUse = m1.content.find((b) => b.type === 'tool_use');
  assert.ok(toolUse);
  const thinking = m1.content.find((b) => b.type === 'thinking');
  assert.equal(thinking.thinking, 'I should call the tool.');
  const results = [
    { type: 'tool_result', tool_use_id: toolUse.id, content: '{"forecast": "sunny"}' },
    { type: 'tool_result', tool_use_id: toolUse.id, content: [{ type: 'text', text: 'service down' }], is_error: true },
  ];
  const variants = {
    passed_back: m1.content,
    omitted: m1.content.filter((b) => b.type !== 'thinking'),
    empty: m1.content.map((b) => (b.type === 'thinking' ? { ...b, thinking: '' } : b)),
  };
  const inputs = {};
  for (const [name, content] of Object.entries(variants)) {
    for (const result of results) {
      const r = await postJSON(S.baseURL, '/v1/messages', {
        model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, tools,
        messages: [user, { role: 'assistant', content }, { role: 'user', content: [result] }],
        ...hook(['Done.', '</think>', 'Sunny.', EOS]),
      }, { headers: ANTHROPIC_HEADERS });
      assert.equal(r.status, 200, `${name} is_error=${!!result.is_error}: ${r.text}`);
      assert.equal(r.json.stop_reason, 'end_turn');
      assert.equal(r.json.content.at(-1).text, 'Sunny.');
      if (!result.is_error) inputs[name] = r.json.usage.input_tokens + (r.json.usage.cache_read_input_tokens ?? 0) + (r.json.usage.cache_creation_input_tokens ?? 0);
    }
  }
  assert.equal(inputs.omitted, inputs.passed_back, `the kept reasoning is restored: ${JSON.stringify(inputs)}`);
  assert.equal(inputs.empty, inputs.passed_back, `the kept reasoning is restored: ${JSON.stringify(inputs)}`);
});

S.test('tool round trip with the real model (calculator)', async () => {
  const tools = [
    { name: 'calculator', description: 'Evaluate an arithmetic expression', input_schema: { type: 'object', properties: { expression: { type: 'string', description: 'The expression, for example 12 * (3 + 4)' } }, required: ['expression'] } },
    { name: 'convert_units', description: 'Convert a quantity from one unit to another', input_schema: { type: 'object', properties: { value: { type: 'number', description: 'The quantity to convert' }, from_unit: { type: 'string', description: 'The unit of the value' }, to_unit: { type: 'string', description: 'The unit wanted' } }, required: ['value', 'from_unit', 'to_unit'] } },
  ];
  const system = 'You are a helpful assistant with a calculator and a unit converter.';
  const messages = [{ role: 'user', content: 'What is 1234 times 56?' }];
  const m1 = await S.anthropic.messages.create({ model, system, tools, messages, max_tokens: 120, temperature: 0 });
  assert.equal(m1.stop_reason, 'tool_use', JSON.stringify(m1.content));
  const tu = m1.content.find((b) => b.type === 'tool_use');
  assert.equal(tu.name, 'calculator');
  assert.equal(typeof tu.input.expression, 'string');
  const s = await rawStream({ model, system, tools, messages, max_tokens: 120, temperature: 0 });
  const noIds = (blocks) => blocks.map(({ id, ...b }) => b);
  assert.deepEqual(noIds(s.blocks), noIds(m1.content), 'the stream gives the same blocks');
  const m2 = await S.anthropic.messages.create({
    model, system, tools, max_tokens: 60, temperature: 0,
    messages: [...messages, { role: 'assistant', content: m1.content }, { role: 'user', content: [{ type: 'tool_result', tool_use_id: tu.id, content: '69104' }] }],
  });
  assert.equal(m2.stop_reason, 'end_turn', JSON.stringify(m2.content));
  assert.ok(!m2.content.some((b) => b.type === 'tool_use'));
  assert.ok(m2.content.map((b) => b.text ?? '').join('').includes('69104'), JSON.stringify(m2.content));
});

S.test('tool_choice none: no tool_use; undeclared tool name: no tool_use', async () => {
  const base = { model, max_tokens: 512, tools: [WEATHER_TOOL_ANTHROPIC], messages: [{ role: 'user', content: 'Weather?' }] };
  const n = await S.anthropic.messages.create({ ...base, tool_choice: { type: 'none' }, ...hook(['Fine.', WEATHER_CALL_TEXT]) });
  assert.ok(!n.content.some((b) => b.type === 'tool_use'), JSON.stringify(n.content));
  assert.notEqual(n.stop_reason, 'tool_use');
  const sn = await rawStream({ ...base, tool_choice: { type: 'none' }, ...hook(['Fine.', WEATHER_CALL_TEXT]) });
  assert.ok(!sn.blocks.some((b) => b.type === 'tool_use'));
  const bad = 'Launching.' + dsmlBlock(['<｜DSML｜invoke name="launch_rocket">\n<｜DSML｜parameter name="target" string="true">moon</｜DSML｜parameter>\n</｜DSML｜invoke>']) + EOS;
  const u = await S.anthropic.messages.create({ ...base, ...hook([bad]) });
  assert.ok(!u.content.some((b) => b.type === 'tool_use'), JSON.stringify(u.content));
  assert.notEqual(u.stop_reason, 'tool_use');
  assert.ok(u.content.map((b) => b.text ?? '').join('').includes('launch_rocket'));
  assert.ok(!/DSML|｜/.test(u.content.map((b) => b.text ?? '').join('')), 'left as text, without the markup');
  // tool_choice any / tool open the call in the prompt (chat mode): the model writes only the rest of it.
  const opening = '\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="';
  const continuation = {
    any: WEATHER_CALL_TEXT.slice(opening.length),
    tool: WEATHER_CALL_TEXT.slice(opening.length + 'get_weather">\n'.length),
    auto: WEATHER_CALL_TEXT,
  };
  for (const tool_choice of [{ type: 'any' }, { type: 'tool', name: 'get_weather' }, { type: 'auto' }]) {
    const r = await S.anthropic.messages.create({ ...base, tool_choice, ...hook(['', continuation[tool_choice.type]]) });
    assert.equal(r.stop_reason, 'tool_use', JSON.stringify(tool_choice));
    assert.deepEqual(r.content.find((b) => b.type === 'tool_use').input, WEATHER_ARGS);
  }
});

S.test('/v1/messages/count_tokens equals the input tokens of the same request', async () => {
  const system = 'You are terse.';
  const messages = [{ role: 'user', content: 'Count me, please: the state of the union.' }];
  const c = await S.anthropic.messages.countTokens({ model, system, messages });
  assert.equal(typeof c.input_tokens, 'number');
  assert.ok(c.input_tokens > 5);
  const m = await S.anthropic.messages.create({ model, system, messages, max_tokens: 1, temperature: 0 });
  const total = m.usage.input_tokens + (m.usage.cache_read_input_tokens ?? 0) + (m.usage.cache_creation_input_tokens ?? 0);
  assert.equal(c.input_tokens, total);
  const withTools = await S.anthropic.messages.countTokens({ model, system, messages, tools: [WEATHER_TOOL_ANTHROPIC] });
  assert.ok(withTools.input_tokens > c.input_tokens, 'tools add to the prompt');
});
