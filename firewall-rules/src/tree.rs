//! Decision tree (in progress).
