// Strict TypeScript consumer of AdvancedEnsemble as the services call it (issue 9): a
// context typed as the caller's own interface, numeric ids and numeric strings, the
// explainable stacking fields, and the bounded-state statistics (issue 13).
import mlops = require('mlops-native')
import type { EnsembleContextStatistics, EnsembleContextPage, VotingResult } from 'mlops-native'

interface Ctx {
  serviceName: string
  predictionType: string
}

async function services(): Promise<number> {
  const e = new mlops.AdvancedEnsemble({ maxContexts: 50_000, maxModels: 20_000 })
  const ctx: Ctx = { serviceName: 'ai-gm', predictionType: 'quality' }
  const s = await e.stackingEnsemble([{ value: 7.5, confidence: 0.9, model: 101 }, { value: '6.5', confidence: '0.8' }], ctx)
  const explained: number = s.rawWeights.reduce((a, w, i) => a + w * s.values[i], s.intercept)
  const ok: boolean = await e.updateWithFeedback([{ value: '7.5', model: 101 }], '7.8', ctx)
  const v: VotingResult = e.confidenceWeightedVotingSync([1, 2], ctx)
  const share: number = v.weights[0].normalizedWeight + v.weights[0].weight
  e.stackingEnsembleSync([1], { features: { inputSize: 100 } })
  const st = e.getStatistics()
  const evicted: number = st.evictions.contexts + st.totals.contextsCreated + st.limits.maxContexts
  const one: EnsembleContextStatistics | null = e.getContextStatistics(ctx.serviceName, ctx.predictionType)
  const page: EnsembleContextPage = e.getContextStatisticsPage(0, 100)
  return explained + share + evicted + Number(ok) + (one ? one.samples : 0) + page.total
}

void services()
