'use strict'
// Linear training at the hardware's speed: the fine-tune typed path (10,000 × 32 rows,
// 10 epochs, batch 32, sgd, save: false) against
//   - the old module's JS algorithm (arrays of rows, slice/map/reduce), target ≥ 25×;
//   - a C loop of the same algorithm compiled here with gcc -O3 -march=native, target ≤ 2×;
// and the results of the SIMD and scalar kernels compared (≤ 1e-9 relative).
// The C loop gets the easiest possible job: data already in one array, no validation of
// input, no napi crossing, no thread hop; the native figure includes all of those.
// A linear fit uses two cores (src/core/finetune.rs, `threads`): the figure on one core
// (MLOPS_TRAIN_THREADS=1, in a child process with its own old-JS baseline) and the CPU
// time per run are printed too. Native and old-JS rounds are interleaved (`interleaved`),
// so that both medians come from the same stretch of this shared machine's time.

const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')
const { execFileSync } = require('node:child_process')
const { ModelFineTuning } = require('../..')
const { median, ROUNDS } = require('./harness.js')
const { data, oldStyleSgd, ROWS, D, OPTS } = require('./finetune.js')

// Medians over many rounds, so that neither side is at the mercy of a few slow rounds on
// this shared machine (the old JS allocates heavily and swings with GC): the millisecond-
// long runs (native, C) get 201, the 25 ms old-JS runs 21.
const FAST_ROUNDS = Math.max(ROUNDS * 30, 201)
const SLOW_ROUNDS = Math.max(ROUNDS * 3, 21)

const C_SOURCE = String.raw`
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
// Mini-batch SGD on squared error, raw features, then validation MSE per epoch.
static double now_ms(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e3 + t.tv_nsec / 1e6; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
  int n = atoi(argv[2]), d = atoi(argv[3]), epochs = atoi(argv[4]), bs = atoi(argv[5]), rounds = atoi(argv[7]);
  double lr = atof(argv[6]);
  double *X = malloc(sizeof(double) * n * d), *y = malloc(sizeof(double) * n);
  FILE *f = fopen(argv[1], "rb");
  if (!f || fread(X, sizeof(double), (size_t)n * d, f) != (size_t)n * d || fread(y, sizeof(double), n, f) != (size_t)n) return 2;
  fclose(f);
  int nval = n / 5, ntrain = n - nval;
  double *w = malloc(sizeof(double) * d), *g = malloc(sizeof(double) * d), *times = malloc(sizeof(double) * rounds);
  double loss = 0;
  for (int round = 0; round < rounds; round++) {
    double t0 = now_ms();
    memset(w, 0, sizeof(double) * d);
    double b = 0;
    for (int e = 0; e < epochs; e++) {
      for (int s = 0; s < ntrain; s += bs) {
        int end = s + bs < ntrain ? s + bs : ntrain;
        memset(g, 0, sizeof(double) * d);
        double gb = 0;
        for (int r = s; r < end; r++) {
          const double *x = X + (size_t)r * d;
          double p = b;
          for (int j = 0; j < d; j++) p += w[j] * x[j];
          double err = p - y[r];
          for (int j = 0; j < d; j++) g[j] += err * x[j];
          gb += err;
        }
        double m = end - s;
        for (int j = 0; j < d; j++) w[j] -= lr * g[j] / m;
        b -= lr * gb / m;
      }
      double se = 0;
      for (int r = ntrain; r < n; r++) {
        const double *x = X + (size_t)r * d;
        double p = b;
        for (int j = 0; j < d; j++) p += w[j] * x[j];
        se += (p - y[r]) * (p - y[r]);
      }
      loss = se / nval;
    }
    times[round] = now_ms() - t0;
  }
  qsort(times, rounds, sizeof(double), cmp);
  printf("%.6f %.8f\n", times[rounds / 2], loss);
  return 0;
}
`

function cLoop(dir, X, y) {
  const src = path.join(dir, 'sgd.c')
  const exe = path.join(dir, 'sgd')
  fs.writeFileSync(src, C_SOURCE)
  execFileSync('gcc', ['-O3', '-march=native', '-o', exe, src])
  const bin = path.join(dir, 'data.bin')
  fs.writeFileSync(bin, Buffer.concat([Buffer.from(X.buffer), Buffer.from(y.buffer)]))
  const out = execFileSync(exe, [bin, ROWS, D, OPTS.epochs, OPTS.batchSize, OPTS.learningRate, FAST_ROUNDS].map(String)).toString().trim().split(' ')
  return { ms: Number(out[0]), loss: Number(out[1]) }
}

/**
 * Median ms of `fast` and of `slow`, their rounds interleaved (a run of `slow`, then
 * fastRounds/slowRounds runs of `fast`, and again): this shared machine drifts between a
 * quick and a slow phase for seconds at a time, and measuring one side after the other
 * put the two sides of a ratio in different phases (ratios from 14× to 30× in one hour).
 */
async function interleaved(fast, slow, fastRounds, slowRounds) {
  await fast()
  await slow()
  const per = Math.ceil(fastRounds / slowRounds)
  const f = []
  const s = []
  const time = async (fn, out) => {
    const t0 = process.hrtime.bigint()
    await fn()
    out.push(Number(process.hrtime.bigint() - t0) / 1e6)
  }
  for (let i = 0; i < slowRounds; i++) {
    await time(slow, s)
    for (let k = 0; k < per; k++) await time(fast, f)
  }
  return { fast: median(f), slow: median(s) }
}

/** Native and old-JS medians in a child process limited to one training core. */
function oneCore(dir) {
  const script = `
    const { ModelFineTuning } = require(${JSON.stringify(path.join(__dirname, '..', '..'))})
    const { data, oldStyleSgd, ROWS, D, OPTS } = require(${JSON.stringify(path.join(__dirname, 'finetune.js'))})
    const { interleaved } = require(${JSON.stringify(__filename)})
    const { X, y } = data()
    const rows = Array.from({ length: ROWS }, (_, i) => ({ features: Array.from(X.subarray(i * D, (i + 1) * D)), quality: y[i] }))
    const ft = new ModelFineTuning({ modelsDir: ${JSON.stringify(dir)} })
    ;(async () => {
      const m = await interleaved(() => ft.fineTuneModel('base.json', { X, y, features: D }, OPTS), () => oldStyleSgd(rows, Array(D).fill(0), 0, OPTS), ${FAST_ROUNDS}, ${SLOW_ROUNDS})
      console.log(JSON.stringify({ native: m.fast, old: m.slow }))
    })()`
  return JSON.parse(execFileSync(process.execPath, ['-e', script], { env: { ...process.env, MLOPS_TRAIN_THREADS: '1' } }).toString())
}

/** CPU time (all threads of this process) per run, ms. */
async function cpuPerRun(fn, runs) {
  await fn()
  const c0 = process.cpuUsage()
  for (let i = 0; i < runs; i++) await fn()
  const c = process.cpuUsage(c0)
  return (c.user + c.system) / 1000 / runs
}

/** The fitted weights under `vars` (MLOPS_KERNEL, MLOPS_TRAIN_THREADS), in a child process
 * (both are read once per process). */
function weightsWith(vars, dir) {
  const script = `
    const { ModelFineTuning } = require(${JSON.stringify(path.join(__dirname, '..', '..'))})
    const { data, D, OPTS } = require(${JSON.stringify(path.join(__dirname, 'finetune.js'))})
    const { X, y } = data()
    new ModelFineTuning({ modelsDir: ${JSON.stringify(dir)} }).fineTuneModel('base.json', { X, y, features: D }, OPTS)
      .then((r) => { if (!r.success) throw new Error(r.error); console.log(JSON.stringify([...r.model.weights, r.model.bias])) })`
  const env = { ...process.env, ...vars }
  if (!vars.MLOPS_KERNEL) delete env.MLOPS_KERNEL
  if (!vars.MLOPS_TRAIN_THREADS) delete env.MLOPS_TRAIN_THREADS
  return JSON.parse(execFileSync(process.execPath, ['-e', script], { env }).toString())
}

async function run() {
  console.log('\n## Linear training speed: 10,000 × 32, 10 epochs, batch 32, sgd (median ms)\n')
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'mlops-train-'))
  try {
    fs.writeFileSync(path.join(dir, 'base.json'), JSON.stringify({ weights: Array(D).fill(0), bias: 0 }))
    const ft = new ModelFineTuning({ modelsDir: dir })
    const { X, y } = data()
    const rows = Array.from({ length: ROWS }, (_, i) => ({ features: Array.from(X.subarray(i * D, (i + 1) * D)), quality: y[i] }))
    const m = await interleaved(
      () => ft.fineTuneModel('base.json', { X, y, features: D }, OPTS),
      () => oldStyleSgd(rows, Array(D).fill(0), 0, OPTS),
      FAST_ROUNDS,
      SLOW_ROUNDS,
    )
    const { fast: native, slow: old } = m
    const cpu = await cpuPerRun(() => ft.fineTuneModel('base.json', { X, y, features: D }, OPTS), 50)
    const one = oneCore(dir)
    let c = null
    try {
      c = cLoop(dir, X, y)
    } catch (e) {
      console.log(`C baseline unavailable (${e.message.split('\n')[0]})`)
    }
    console.log(`native typed path          ${native.toFixed(3).padStart(8)} ms   ${(old / native).toFixed(1)}× the old module's JS (target ≥ 25×)`)
    console.log(`  CPU time per run (all threads) ${cpu.toFixed(3)} ms`)
    console.log(`old module's JS algorithm  ${old.toFixed(3).padStart(8)} ms`)
    console.log(`native on one core         ${one.native.toFixed(3).padStart(8)} ms   ${(one.old / one.native).toFixed(1)}× the old JS in that process (${one.old.toFixed(3)} ms)`)
    if (c) console.log(`C -O3 -march=native loop   ${c.ms.toFixed(3).padStart(8)} ms   native / C = ${(native / c.ms).toFixed(2)} (target ≤ 2)`)
    // The kernel the CPU gets by default (AVX-512 where present), AVX2 forced, and one
    // core, each against the scalar kernel.
    const scalar = weightsWith({ MLOPS_KERNEL: 'scalar' }, dir)
    let worst = 0
    for (const [label, env] of [['default', {}], ['avx2', { MLOPS_KERNEL: 'avx2' }], ['default, one core', { MLOPS_TRAIN_THREADS: '1' }]]) {
      const w = weightsWith(env, dir)
      let rel = 0
      for (let i = 0; i < w.length; i++) rel = Math.max(rel, Math.abs(w[i] - scalar[i]) / Math.max(Math.abs(scalar[i]), 1e-300))
      worst = Math.max(worst, rel)
      console.log(`${label} kernel vs scalar: largest relative difference in the fitted model ${rel.toExponential(2)} (target ≤ 1e-9)`)
    }
    return { native, old, c: c && c.ms, worst, cpu, oneCore: one }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

module.exports = { run, interleaved }
if (require.main === module) run()
