pub mod facts;
pub mod ops;
pub mod run;
pub mod phase;
pub mod dag;
pub mod summary;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod patroni_tests;
