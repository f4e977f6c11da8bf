//! API simulators (`rigger sim ...`).

pub mod local_machines;
pub mod proxmox;
pub mod yandex;
