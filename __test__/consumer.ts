// A strict TypeScript consumer of the package: every exported class, through the package
// name as a service would import it. `npm test` type-checks this file.
import mlops = require('mlops-native')
import type { StackingResult, EnsembleStatistics, PredictionEntry } from 'mlops-native'

async function ensemble(): Promise<number> {
  const e: mlops.AdvancedEnsemble = mlops.getAdvancedEnsemble()
  const own = new mlops.AdvancedEnsemble({ minSamples: 5, forgetting: 0.99 })
  const ok: boolean = await own.initialize()
  const preds: PredictionEntry[] = [{ value: 1, confidence: 0.9, model: 'a' }, { prediction: 0 }, 3]
  const s: StackingResult = await e.stackingEnsemble(preds, { serviceName: 'ai-gm', predictionType: 'quality' })
  const w: number[] = s.metaWeights
  const src: 'context' | 'global' | 'prior' = s.source
  const d = e.dynamicSelectionSync(preds)
  const best: string = d.selectedModels[0].model
  const v = await e.confidenceWeightedVoting(preds, { calibrate: true })
  const learned: boolean = e.updateWithFeedbackSync(preds, 2, { serviceName: 'ai-gm' })
  const later: boolean = await e.updateWithFeedback(preds, 2)
  const stats: EnsembleStatistics = e.getStatistics()
  const avg: number = stats.avgError
  const batch: Float64Array = e.stackingBatch(new Float64Array([1, 2]), ['a', 'b'], { serviceName: 'x' })
  e.registerNeuralNetwork({ trained: true, predict: (f) => f[0] })
  await e.saveState('/tmp/state.json')
  await e.loadState('/tmp/state.json')
  const json: Record<string, unknown> = e.toJSON()
  return w[0] + v.prediction + avg + batch[0] + Number(ok && learned && later) + best.length + src.length + Object.keys(json).length
}

void ensemble()

async function fineTuning(): Promise<void> {
  const ft: mlops.ModelFineTuning = new mlops.ModelFineTuning({ modelsDir: 'models', epochs: 5 })
  ft.config.learningRate = 0.01
  await ft.initialize()
  const r: mlops.FineTuneResult = await ft.fineTuneModel('quality-predictor-v3-advanced.json', [{ features: [1, 2], quality: 5 }], {
    optimizer: 'sgd',
    onProgress: (p) => console.log(p.epoch, p.valLoss),
  })
  if (r.success) {
    const mse: number = r.metrics.mse
    const v: string | null = r.version
    console.log(mse, v, r.accepted)
  } else {
    const why: string = r.error
    console.log(why)
  }
  await ft.fineTuneModel(undefined, { X: new Float64Array(4), y: new Float64Array(2), features: 2 }, { save: false })
  // What services send: numeric strings, named features, a family, the gate's options.
  const t = await ft.fineTuneModel('q.json', [{ features: { promptTokens: '120', latencyMs: 900 }, quality: '7.5' }], {
    epochs: '10',
    learningRate: '0.001',
    model: 'auto',
    confidence: 0.99,
    save: 'always',
    strict: false,
    featureNames: ['promptTokens', 'latencyMs'],
  })
  if (t.success) {
    const skipped: number = t.skipped.count + (t.skipped.reasons.missingQuality ?? 0)
    const p: number = t.pValue + t.test.metrics.mse + t.candidates[0].trainMs
    const fam: mlops.ModelFamily = t.family
    if (t.saved) {
      const file: string = t.modelPath
      const v: string = t.version
      console.log(file, v)
    } else {
      const none: null = t.modelPath
      console.log(none, t.reason)
    }
    console.log(skipped, p, fam)
  }
  const model: mlops.Model = await mlops.Model.load('q.json')
  const fam: mlops.ModelFamily = model.family
  const y1: number = model.predict([1, 2]) + model.predict(new Float64Array(2))
  const ys: Float64Array = model.predictBatch(new Float64Array(4), 2)
  console.log(fam, y1, ys, model.features.length, Object.keys(mlops.Model.fromJSON(model.toJSON())))
  const h: mlops.ModelVersionEntry[] = await ft.getFineTuningHistory('quality-predictor-v3-advanced.json')
  const created: string = h[0].created
  await ft.promoteVersion('quality-predictor-v3-advanced.json', 'v1')
  const prod = await ft.getProductionVersion()
  const next: string = ft.getNextVersion()
  const m = await ft.loadModel('x.json')
  if (m) console.log(ft.predictSingle(m, [1, 2]), ft.evaluateModel(m, [[1, 2]], [3]).r2)
  console.log(created, prod?.status, next, mlops.getModelFineTuning().fineTunedDir)
}
void fineTuning()

async function predictions(): Promise<void> {
  const p = new mlops.ExpandedPredictions({ quantileWindow: 200, priceTable: { m: { input_cost_per_token: 1e-6, output_cost_per_token: 2e-6 } } })
  await p.initialize()
  const ctx: mlops.PredictionContext = { serviceName: 'ai-gm', provider: 'openai', model: 'gpt-4o', inputTokens: 800, cacheHit: true }
  const lat: number = (await p.predictLatency(ctx)).p95
  const unit: 'usd' | 'credits' = p.predictCostSync(ctx).unit
  const all: mlops.AllPredictions = await p.predictAll(ctx)
  const many: mlops.AllPredictions[] = p.predictAllBatch([ctx, {}])
  const ok: boolean = p.recordOutcomeSync(ctx, { latencyMs: 900, outputTokens: 300, satisfaction: 4 })
  await p.recordOutcome(ctx, { cpu: 40 })
  const n: number = p.setPriceTable('prices.json')
  await p.saveState('/tmp/p.json')
  console.log(lat, unit, all.timestamp, many.length, ok, n, p.getStatistics().outcomes, mlops.getExpandedPredictions().predictResourcesSync().cpu)
  // A service's own interface, with its own extra fields and database-typed values.
  interface RequestRow { serviceName: string; predictionType: string; inputSize: string; batchSize: number | null; tenantId: number }
  const row: RequestRow = { serviceName: 'ai-gm', predictionType: 'latency', inputSize: '100', batchSize: null, tenantId: 7 }
  const fromRow = await p.predictAll(row)
  const warnings: string[] | undefined = fromRow.latency.warnings
  console.log(fromRow.resources.memory, warnings?.length)
}
void predictions()

async function realtime(): Promise<void> {
  const rt = new mlops.RealTimeModelUpdates({ modelsDir: 'models', bufferSize: 50, feedbackLogDir: false })
  const ok: boolean = await rt.initialize()
  rt.on('update', (r) => console.log(r.improvement, r.modelVersion)).on('drift', (d) => console.log(d.seq))
  const durable: boolean = await rt.addFeedback({ prediction: 7, actual: 8, features: [1, 2] })
  const queued: boolean = rt.addFeedbackSync({ prediction: 7, actual: 8, features: [] })
  const n: number = rt.addFeedbackBatch(new Float64Array(4), new Float64Array(2), new Float64Array(2))
  const report = await rt.forceUpdate()
  if (report) console.log(report.accepted)
  const y: number = rt.predictSync([1, 2])
  const swapped: boolean = await rt.hotSwapModel('other.json')
  const s: mlops.RealTimeStatistics = rt.getStatistics()
  await rt.cleanup()
  const m = new mlops.OnlineLinearModel({ learningRate: 0.05 })
  m.learnOne([1, 2], 3)
  m.learnBatch(new Float64Array([1, 2]), new Float64Array([3]))
  const copy: mlops.OnlineLinearModel = mlops.OnlineLinearModel.fromJSON(m.toJSON())
  const raw: { weights: number[]; bias: number } = copy.toModel()
  console.log(ok, durable, queued, n, y, swapped, s.accepted, raw.bias, m.predictOne(new Float64Array([1, 2])), mlops.getRealTimeModelUpdates().getCurrentModelPath())
}
void realtime()
