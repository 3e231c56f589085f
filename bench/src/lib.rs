//! Benchmark support code: a seeded, realistic random rule file and packet
//! mix for the rule-classification benchmark.

pub mod rulegen;
