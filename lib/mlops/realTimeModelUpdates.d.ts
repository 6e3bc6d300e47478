// Types for the drop-in path `mlops-native/lib/mlops/realTimeModelUpdates` (the old module's exports).
export { RealTimeModelUpdates, getRealTimeModelUpdates } from '../../index'
