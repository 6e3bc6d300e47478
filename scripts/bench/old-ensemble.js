'use strict'
// Plain-JS implementation of the old lib/mlops/advancedEnsemble.js rules (the baseline
// for `npm run bench`): performance weight EMA per `${serviceName}_${model}`, "stacking"
// as a confidence × performance weighted mean, dynamic selection as the top
// min(3, ceil(n/2)) by that score, voting by confidence².

class OldAdvancedEnsemble {
  constructor() {
    this.performanceWeights = new Map()
    this.history = []
  }

  #entries(predictions) {
    return predictions.map((p, i) => ({
      value: typeof p === 'number' ? p : p.prediction ?? p.value,
      confidence: typeof p === 'number' ? 0.5 : p.confidence ?? 0.5,
      model: (typeof p === 'object' && p.model) || `model_${i}`,
    }))
  }

  #weight(service, model) {
    return this.performanceWeights.get(service ? `${service}_${model}` : model) ?? 1.0
  }

  stackingEnsembleSync(predictions, context = {}) {
    const base = this.#entries(predictions)
    const w = base.map((b) => b.confidence * this.#weight(context.serviceName, b.model))
    const total = w.reduce((a, b) => a + b, 0)
    const prediction = base.reduce((a, b, i) => a + b.value * w[i], 0) / total
    return {
      prediction,
      confidence: base.reduce((a, b) => a + b.confidence, 0) / base.length,
      strategy: 'stacking',
      basePredictions: base,
      metaWeights: w.map((x) => x / total),
      hybridModels: false,
    }
  }

  dynamicSelectionSync(predictions, context = {}) {
    const base = this.#entries(predictions)
    const scored = base
      .map((b) => ({ model: b.model, score: b.confidence * this.#weight(context.serviceName, b.model), prediction: b.value }))
      .sort((a, b) => b.score - a.score)
    const k = Math.min(3, Math.ceil(base.length / 2))
    const selected = scored.slice(0, k)
    const total = selected.reduce((a, s) => a + s.score, 0)
    return {
      prediction: selected.reduce((a, s) => a + s.prediction * s.score, 0) / total,
      confidence: total / k,
      strategy: 'dynamic-selection',
      selectedModels: selected,
      totalModels: base.length,
      selectedCount: k,
    }
  }

  confidenceWeightedVotingSync(predictions) {
    const base = this.#entries(predictions)
    const weights = base.map((b) => ({ model: b.model, confidence: b.confidence, weight: b.confidence * b.confidence }))
    const total = weights.reduce((a, w) => a + w.weight, 0)
    return {
      prediction: base.reduce((a, b, i) => a + b.value * weights[i].weight, 0) / total,
      confidence: base.reduce((a, b) => a + b.confidence, 0) / base.length,
      strategy: 'confidence-weighted',
      weights,
    }
  }

  updateWithFeedbackSync(predictions, actual, context = {}) {
    for (const b of this.#entries(predictions)) {
      const key = context.serviceName ? `${context.serviceName}_${b.model}` : b.model
      const old = this.performanceWeights.get(key) ?? 1.0
      this.performanceWeights.set(key, 0.9 * old + 0.1 / (1 + Math.abs(b.value - actual)))
    }
    this.history.push({ predictions, actual, timestamp: Date.now() })
    if (this.history.length > 1000) this.history.shift()
    return true
  }
}

module.exports = { OldAdvancedEnsemble }
