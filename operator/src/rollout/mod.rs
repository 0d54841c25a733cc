//! The rolling-update planner (pure): observed nodes, pods and budgets -> actions.
