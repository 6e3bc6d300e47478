// Types for the drop-in path `mlops-native/lib/mlops/modelFineTuning` (the old module's exports).
export { ModelFineTuning, getModelFineTuning } from '../../index'
