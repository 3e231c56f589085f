//! Shared helpers for the root integration tests (netns, processes, binaries).
