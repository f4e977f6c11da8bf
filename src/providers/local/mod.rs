//! The local provider: systemd-nspawn machines on bridges (being written).
pub mod cmd;
pub mod image;
pub mod mounts;
