pub mod events;
pub mod plan;
pub mod providers;
pub mod resource;
pub mod sim;
