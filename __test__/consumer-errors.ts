// Wrong calls that the published types must refuse. Each line carries @ts-expect-error:
// if a type became too loose, the directive itself fails the check.
import mlops = require('mlops-native')

const e = new mlops.AdvancedEnsemble()
// @ts-expect-error predictions must be an array
void e.stackingEnsembleSync(5)
// @ts-expect-error an entry's value is a number or a numeric string, not a boolean
void e.stackingEnsembleSync([{ value: true }])
// @ts-expect-error a context has known fields only
void e.stackingEnsembleSync([1], { serviceName: 'a', tenant: 'b' })
// @ts-expect-error actual is required
void e.updateWithFeedbackSync([1])
// @ts-expect-error the batch path takes a Float64Array
void e.stackingBatch([1, 2], ['a'])
// @ts-expect-error unknown option
void new mlops.AdvancedEnsemble({ historySize: '10' })
// @ts-expect-error the strategy literal is fixed
const s: 'voting' = e.stackingEnsembleSync([1]).strategy
void s
const ft = new mlops.ModelFineTuning()
// @ts-expect-error rows need a quality
void ft.fineTuneModel('m.json', [{ features: [1] }])
// @ts-expect-error unknown optimizer
void ft.fineTuneModel('m.json', [], { optimizer: 'lbfgs' })
// @ts-expect-error the result may be a failure: narrow on success first
void ((r: mlops.FineTuneResult) => r.metrics)
// @ts-expect-error a successful run may have written nothing: narrow on saved for the path
void ((r: mlops.FineTuneResult) => (r.success ? r.modelPath.length : 0))
// @ts-expect-error unknown family
void ft.fineTuneModel('m.json', [], { model: 'xgboost' })
const p = new mlops.ExpandedPredictions()
// @ts-expect-error cacheHit is a boolean
void p.predictAllSync({ cacheHit: 'yes' })
// @ts-expect-error an outcome is required
void p.recordOutcomeSync({})
// @ts-expect-error cost units are fixed
const u: 'eur' = p.predictCostSync().unit
void u
const rt = new mlops.RealTimeModelUpdates()
// @ts-expect-error feedback needs an actual
void rt.addFeedbackSync({ prediction: 1 })
// @ts-expect-error unknown event
rt.on('swap', () => {})
// @ts-expect-error batch features are a Float64Array
void rt.addFeedbackBatch([1], new Float64Array(1), new Float64Array(1))
