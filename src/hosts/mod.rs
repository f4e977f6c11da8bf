//! The hosts phase: reaching the machines (remote), reading what they have
//! (facts), what the roles want there (roles, ops), and the run that walks the
//! roles' needs to get there (dag, phase, run) and says what it did (summary).

pub mod dag;
pub mod facts;
pub mod ops;
pub mod phase;
pub mod remote;
pub mod roles;
pub mod run;
pub mod summary;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod patroni_tests;
