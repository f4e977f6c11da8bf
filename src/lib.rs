//! rigger: one plan file to a healthy HA stack.

pub mod cli;
pub mod cloud;
pub mod client_path;
pub mod commands;
pub mod flows;
pub mod hosts;
pub mod inventory;
pub mod pki;
pub mod plan;
pub mod project;
pub mod render;
pub mod reshape;
pub mod saved_plan;
pub mod state;
pub mod ui;
