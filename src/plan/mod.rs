pub mod model;
pub mod yaml;
pub mod diag;
pub mod size;
pub mod services;
pub mod load;
pub use load::{load, load_str};
pub mod generate;
