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
