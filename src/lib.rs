//! rigger: one plan file to a healthy HA stack.

pub mod cli;
pub mod client_path;
pub mod commands;
pub mod config;
pub mod diff;
pub mod engine;
#[cfg(test)]
mod engine_tests;
pub mod events;
pub mod flows;
pub mod graph;
pub mod inventory;
pub mod pki;
pub mod plan;
pub mod project;
pub mod providers;
pub mod remote;
pub mod render;
pub mod reshape;
pub mod resource;
pub mod roles;
pub mod saved_plan;
pub mod sim;
pub mod state;
pub mod ui;
