pub mod facts;
pub mod ops;
