// The README's one-line switch, under strict TypeScript: each old module path resolves to
// declarations (through the `types` condition of the package's exports map).
import { AdvancedEnsemble, getAdvancedEnsemble } from 'mlops-native/lib/mlops/advancedEnsemble'
import { ModelFineTuning, getModelFineTuning } from 'mlops-native/lib/mlops/modelFineTuning'
import { RealTimeModelUpdates, getRealTimeModelUpdates } from 'mlops-native/lib/mlops/realTimeModelUpdates'
import { ExpandedPredictions, getExpandedPredictions } from 'mlops-native/lib/mlops/expandedPredictions'

async function subpaths(): Promise<number> {
  const e: AdvancedEnsemble = getAdvancedEnsemble()
  const s = await e.stackingEnsemble([{ value: 1, confidence: 0.9, model: 'a' }, 2])
  const ft: ModelFineTuning = getModelFineTuning()
  const next: string = ft.getNextVersion('quality-predictor-v3-advanced.json')
  const rt: RealTimeModelUpdates = getRealTimeModelUpdates()
  const path: string = rt.getCurrentModelPath()
  const p: ExpandedPredictions = getExpandedPredictions()
  const l = await p.predictLatency({ serviceName: 'ai-gm' })
  void [AdvancedEnsemble, ModelFineTuning, RealTimeModelUpdates, ExpandedPredictions]
  return s.prediction + next.length + path.length + l.latency
}
void subpaths()

// Monitoring, tracking and logging options type-check.
import promClient = require('prom-client')
async function monitoring(): Promise<string> {
  const ft = new ModelFineTuning({ logger: console, mlflow: { trackingUri: 'http://127.0.0.1:5000', experiment: 'quality' } })
  const rt = new RealTimeModelUpdates({ logger: console, bufferSize: 100 })
  const e = new AdvancedEnsemble({ logger: console, minSamples: 5 })
  for (const x of [ft, rt, e, getExpandedPredictions()]) x.registerMetrics(promClient.register, { instance: 'a' })
  const r = await ft.fineTuneModel('m.json', [{ features: [1], quality: 2 }])
  if (r.success) console.log(r.warnings?.length, r.mlflow?.runId)
  return e.metrics() + rt.metrics() + ft.metrics()
}
void monitoring()
