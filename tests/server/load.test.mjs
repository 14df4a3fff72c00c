// A bounded load test: 2 x slots clients stream back to back for about 10 s (real model completions through
// both SDKs and raw fetch); every request is answered with 200 or 429, the server survives, and the
// metrics return to idle. All traffic goes to the loopback server this file starts.
import assert from 'node:assert/strict';
import OpenAI from 'openai';
import Anthropic from '@anthropic-ai/sdk';
import { useServer, postSSE, getJSON, metrics, waitMetrics, accumulateChat, collect } from './support.mjs';

const SLOTS = 2;
const QUEUE = 2;
const DURATION_MS = Number(process.env.DSV4_LOAD_MS || 10_000);
const S = useServer({ args: ['--slots', String(SLOTS), '--queue', String(QUEUE), '-c', '1024'], name: 'load' });
const T = { timeout: 15_000 }; // per request: a stalled request is an error, not a hang

const PROMPTS = [
  'Hello! How are you today?',
  'Tell me about the state of the union.',
  'What is 12 plus 7?',
  'Who gave the address of 1862?',
  'Continue the speech: Mr. Speaker, the state of our union is',
];

S.test(`load: ${2 * SLOTS} concurrent streaming clients for ${DURATION_MS / 1000} s`, async () => {
  const m0 = await metrics(S.baseURL);
  const deadline = Date.now() + DURATION_MS;
  const stats = { ok: 0, busy: 0, other: [], errors: [] };
  let seq = 0;

  async function client(c) {
    while (Date.now() < deadline) {
      const i = seq++;
      const prompt = PROMPTS[i % PROMPTS.length];
      const kind = (c + i) % 3;
      try {
        if (kind === 0) {
          // Raw fetch: the body must be a complete stream ending in [DONE].
          const r = await postSSE(S.baseURL, '/v1/chat/completions', { model: 'm', messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: 16, stream: true, stream_options: { include_usage: true } }, { timeoutMs: 15_000 });
          if (r.status === 200) {
            if (!r.text.trimEnd().endsWith('data: [DONE]')) stats.errors.push(`request ${i}: stream without [DONE]`);
            const acc = accumulateChat(r.events.filter((e) => e.json).map((e) => e.json));
            if (!acc.finish) stats.errors.push(`request ${i}: no finish_reason`);
            if (acc.ids.size !== 1) stats.errors.push(`request ${i}: ${acc.ids.size} ids`);
            if (!acc.usage || acc.usage.completion_tokens < 1 || acc.usage.completion_tokens > 16) stats.errors.push(`request ${i}: usage ${JSON.stringify(acc.usage)}`);
            stats.ok++;
          } else if (r.status === 429) {
            if (!r.json?.error) stats.errors.push(`request ${i}: 429 without error envelope`);
            stats.busy++;
          } else {
            stats.other.push(`request ${i}: ${r.status} ${r.text.slice(0, 200)}`);
          }
        } else if (kind === 1) {
          const chunks = await collect(await S.openai.chat.completions.create({ model: 'm', messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: 16, stream: true }, T));
          const acc = accumulateChat(chunks);
          if (!acc.finish) stats.errors.push(`request ${i}: no finish_reason`);
          stats.ok++;
        } else {
          const evs = await collect(await S.anthropic.messages.create({ model: 'm', messages: [{ role: 'user', content: prompt }], temperature: 0, max_tokens: 16, stream: true }, T));
          if (evs[0]?.type !== 'message_start' || evs.at(-1)?.type !== 'message_stop') stats.errors.push(`request ${i}: events ${evs.map((e) => e.type).join(' ')}`);
          stats.ok++;
        }
      } catch (e) {
        if (e instanceof OpenAI.RateLimitError || e instanceof Anthropic.RateLimitError || (e instanceof Anthropic.APIError && e.status === 529)) stats.busy++;
        else stats.errors.push(`request ${i}: ${e}`);
      }
    }
  }

  await Promise.all(Array.from({ length: 2 * SLOTS }, (_, c) => client(c)));
  const total = stats.ok + stats.busy + stats.other.length + stats.errors.length;
  process.stderr.write(`load: ${total} requests in ${DURATION_MS} ms: ${stats.ok} ok, ${stats.busy} busy (429)\n`);
  assert.deepEqual(stats.other, [], 'every request answered 200 or 429');
  assert.deepEqual(stats.errors, [], 'no broken stream, no connection error');
  assert.ok(stats.ok >= 2 * SLOTS, `most requests were served (${stats.ok} ok of ${seq})`);
  assert.ok(S.server.alive(), 'the server survived');
  assert.equal((await getJSON(S.baseURL, '/health')).status, 200);
  const m1 = await waitMetrics(S.baseURL, (x) => x.get('dsv4_active_sequences') === 0 && x.get('dsv4_queue_depth') === 0, 5000);
  assert.equal(m1.get('dsv4_active_sequences'), 0, 'active sequences back to 0');
  assert.equal(m1.get('dsv4_queue_depth'), 0, 'queue back to 0');
  assert.ok(m1.get('dsv4_requests_total') - m0.get('dsv4_requests_total') >= stats.ok, 'requests_total counted the served requests');
  assert.ok(m1.get('dsv4_generated_tokens_total') > m0.get('dsv4_generated_tokens_total'));
});
