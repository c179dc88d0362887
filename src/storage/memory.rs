//! In-memory store (for tests and the PromQL test runner).
