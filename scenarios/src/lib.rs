//! Scenario model, step runner, verifier, reports
