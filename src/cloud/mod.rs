//! The cloud phase: what the plan asks of the provider (resources), how it
//! differs from what exists (diff), in which order to change it (graph), and
//! the run that does it (engine) through one provider.

pub mod diff;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod graph;
pub mod providers;
pub mod resource;
