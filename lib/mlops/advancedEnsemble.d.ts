// Types for the drop-in path `mlops-native/lib/mlops/advancedEnsemble` (the old module's exports).
export { AdvancedEnsemble, getAdvancedEnsemble } from '../../index'
