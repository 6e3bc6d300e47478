// Types for the drop-in path `mlops-native/lib/mlops/expandedPredictions` (the old module's exports).
export { ExpandedPredictions, getExpandedPredictions } from '../../index'
