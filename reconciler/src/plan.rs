//! The pure reconcile planner: `plan(desired, actual) -> Plan`, no I/O.
