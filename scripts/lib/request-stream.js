'use strict'
// Seeded synthetic LLM request stream ("a day of traffic") for the ExpandedPredictions
// demo, tests and benchmark. Documented so the figures can be read against it:
//
// - 4 services (ai-gm, oracle, code-roach, first-mate) and 6 provider/model pairs; each
//   request picks a service uniformly and a model with fixed popularity weights.
// - inputTokens ~ lognormal (median 600, heavier for code-roach); outputTokens ~
//   lognormal with a per-service median (ai-gm 350, oracle 60, code-roach 250,
//   first-mate 120); 30 % of requests hit the prompt cache (then 80 % of input is cached).
// - latency = (ttft + inPerK·inputTokens/1000 + perToken·outputTokens) × load(hour) ×
//   lognormal(σ = 0.22), with ttft halved on a cache hit and load(hour) = 1 + 0.25·sin
//   over the day; ttft and perToken are per model (see MODELS).
// - cost is exact from the bundled LiteLLM-format price table.
// - satisfaction (1-5) falls with latency and rises with model quality; cpu/memory/network
//   depend on the service, batch size and input size. All with noise.

const MODELS = [
  { provider: 'openai', model: 'gpt-4o', weight: 3, ttft: 380, inPerK: 40, perToken: 11, quality: 8.6 },
  { provider: 'openai', model: 'gpt-4o-mini', weight: 4, ttft: 220, inPerK: 15, perToken: 5, quality: 7.4 },
  { provider: 'anthropic', model: 'claude-sonnet-4-20250514', weight: 2, ttft: 650, inPerK: 55, perToken: 14, quality: 8.9 },
  { provider: 'anthropic', model: 'claude-3-5-haiku-20241022', weight: 2, ttft: 320, inPerK: 20, perToken: 6, quality: 7.2 },
  { provider: 'gemini', model: 'gemini-2.0-flash', weight: 2, ttft: 180, inPerK: 10, perToken: 3.5, quality: 7.0 },
  { provider: 'deepseek', model: 'deepseek-chat', weight: 1, ttft: 900, inPerK: 60, perToken: 22, quality: 8.0 },
]
const SERVICES = [
  { name: 'ai-gm', out: 350, inMul: 1, cpu: 25, mem: 35 },
  { name: 'oracle', out: 60, inMul: 0.6, cpu: 15, mem: 25 },
  { name: 'code-roach', out: 250, inMul: 2.5, cpu: 40, mem: 45 },
  { name: 'first-mate', out: 120, inMul: 0.8, cpu: 20, mem: 30 },
]
const PRICES = require('../../data/model-prices.json')

function rng(seed) {
  let s = seed >>> 0
  const u = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296)
  const normal = () => {
    let t = 0
    for (let i = 0; i < 12; i++) t += u()
    return t - 6
  }
  return { u, normal }
}

function priceOf(m) {
  return PRICES[m.model] ?? PRICES[`${m.provider}/${m.model}`]
}

/** `n` requests over one day: `[{context, outcome, truth}]`. */
function requestStream(n, seed = 1) {
  const r = rng(seed)
  const totalWeight = MODELS.reduce((a, m) => a + m.weight, 0)
  const out = []
  for (let i = 0; i < n; i++) {
    const svc = SERVICES[Math.floor(r.u() * SERVICES.length)]
    let pick = r.u() * totalWeight
    const m = MODELS.find((x) => (pick -= x.weight) < 0) ?? MODELS[0]
    const hour = Math.floor((i / n) * 24)
    const inputTokens = Math.round(600 * svc.inMul * Math.exp(0.6 * r.normal()))
    const outputTokens = Math.max(1, Math.round(svc.out * Math.exp(0.5 * r.normal())))
    const cacheHit = r.u() < 0.3
    const cachedInputTokens = cacheHit ? Math.round(0.8 * inputTokens) : 0
    const load = 1 + 0.25 * Math.sin(((hour - 8) / 24) * 2 * Math.PI)
    const ttft = cacheHit ? m.ttft / 2 : m.ttft
    const latencyMs = Math.round((ttft + (m.inPerK * inputTokens) / 1000 + m.perToken * outputTokens) * load * Math.exp(0.22 * r.normal()))
    const p = priceOf(m)
    const cost = (inputTokens - cachedInputTokens) * p.input_cost_per_token + cachedInputTokens * (p.cache_read_input_token_cost ?? p.input_cost_per_token) + outputTokens * p.output_cost_per_token
    const quality = Math.min(10, Math.max(0, m.quality + 0.8 * r.normal()))
    const satisfaction = Math.min(5, Math.max(1, 1 + 0.38 * quality - latencyMs / 4000 + 0.35 * r.normal()))
    const batchSize = 1 + Math.floor(r.u() * 8)
    const cpu = Math.min(100, Math.max(0, svc.cpu + 0.004 * inputTokens + 3 * batchSize + 4 * r.normal()))
    const memory = Math.min(100, Math.max(0, svc.mem + 4 * batchSize + 3 * r.normal()))
    const network = Math.min(100, Math.max(0, 3 + 0.002 * (inputTokens + outputTokens) + r.normal()))
    out.push({
      context: { serviceName: svc.name, provider: m.provider, model: m.model, inputTokens, cacheHit, cachedInputTokens, hour, inputSize: inputTokens * 4, quality, batchSize },
      outcome: { latencyMs, inputTokens, outputTokens, cost, satisfaction, cpu, memory, network },
    })
  }
  return out
}

module.exports = { requestStream, rng, MODELS, SERVICES }
