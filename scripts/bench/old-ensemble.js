'use strict'
// Plain-JS implementation of the old lib/mlops/advancedEnsemble.js rules, exactly as
// docs/api-contract.md states them. It is the baseline of `npm run bench` and the
// reference the tests pin the cold-start answers to:
// - performance weight pw(k) per k = `${serviceName}_${model}` (or `model`): EMA
//   0.9·old + 0.1/(1+|error|), 1.0 when unknown;
// - stacking: wᵢ = cᵢ × pw(kᵢ) (pw only with a serviceName), normalised to nᵢ;
//   prediction Σ nᵢvᵢ, confidence min(1, Σ nᵢcᵢ), metaWeights n;
// - dynamic selection: score = min(1, (0.5 + 0.3c)·pw + 0.2·[entry.predictionType ===
//   context.predictionType]) (pw only with serviceName and model, 0.3c only when the entry
//   has a confidence), top min(3, ceil(n/2)), prediction Σ (score/Σscore)·v, confidence the
//   mean c of the selected;
// - voting: weight cᵢ² (not normalised), prediction Σc²v/Σc², confidence the mean c.
// `c` is the confidence or 0.5. Unlike the old code, a 0 value or confidence is kept (the
// intended difference the README lists).

class OldAdvancedEnsemble {
  constructor() {
    this.performanceWeights = new Map()
    this.history = []
  }

  #entries(predictions) {
    return predictions.map((p, i) => {
      const obj = typeof p === 'object' && p !== null
      const confidence = obj ? p.confidence : undefined
      return {
        value: Number(obj ? p.prediction ?? p.value : p),
        confidence: confidence === undefined || confidence === null ? 0.5 : Number(confidence),
        hasConfidence: confidence !== undefined && confidence !== null,
        model: obj && p.model !== undefined && p.model !== null && p.model !== '' ? String(p.model) : `model_${i}`,
        hasModel: obj && p.model !== undefined && p.model !== null && p.model !== '',
        predictionType: obj ? p.predictionType ?? undefined : undefined,
      }
    })
  }

  #weight(service, model) {
    return this.performanceWeights.get(service ? `${service}_${model}` : model) ?? 1.0
  }

  stackingEnsembleSync(predictions, context = {}) {
    const base = this.#entries(predictions)
    const w = base.map((b) => b.confidence * (context.serviceName ? this.#weight(context.serviceName, b.model) : 1))
    const total = w.reduce((a, b) => a + b, 0)
    const n = w.map((x) => x / total)
    return {
      prediction: base.reduce((a, b, i) => a + b.value * n[i], 0),
      confidence: Math.min(1, base.reduce((a, b, i) => a + b.confidence * n[i], 0)),
      strategy: 'stacking',
      basePredictions: base.map((b) => ({ value: b.value, confidence: b.confidence, model: b.model })),
      metaWeights: n,
      hybridModels: false,
    }
  }

  dynamicSelectionSync(predictions, context = {}) {
    const base = this.#entries(predictions)
    const scored = base
      .map((b, i) => {
        const pw = context.serviceName && b.hasModel ? this.#weight(context.serviceName, b.model) : 1
        const match = (b.predictionType ?? undefined) === (context.predictionType ?? undefined) ? 0.2 : 0
        return { i, model: b.model, score: Math.min(1, (0.5 + (b.hasConfidence ? 0.3 * b.confidence : 0)) * pw + match), prediction: b.value, confidence: b.confidence }
      })
      .sort((a, b) => b.score - a.score || a.i - b.i)
    const k = Math.min(3, Math.ceil(base.length / 2))
    const selected = scored.slice(0, k)
    const total = selected.reduce((a, s) => a + s.score, 0)
    return {
      prediction: selected.reduce((a, s) => a + (s.prediction * s.score) / total, 0),
      confidence: selected.reduce((a, s) => a + s.confidence, 0) / k,
      strategy: 'dynamic-selection',
      selectedModels: selected.map((s) => ({ model: s.model, score: s.score, prediction: s.prediction })),
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
      this.performanceWeights.set(key, 0.9 * old + 0.1 / (1 + Math.abs(b.value - Number(actual))))
    }
    this.history.push({ predictions, actual, timestamp: Date.now() })
    if (this.history.length > 1000) this.history.shift()
    return true
  }
}

module.exports = { OldAdvancedEnsemble }
