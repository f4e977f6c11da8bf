//! API simulators (`rigger sim ...`).

pub mod proxmox;
pub mod yandex;
