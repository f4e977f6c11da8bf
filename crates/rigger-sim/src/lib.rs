//! API simulators (`rigger sim ...`).
//!
//! Each simulator has its own `MachineBackend` (what stands behind a simulated
//! instance) and its own `NoMachines` (nothing does), because the two APIs hand
//! work to machines differently: Yandex Cloud answers with an operation at
//! once, so its backend takes events (running, stopped, deleted) fire-and-forget
//! after the world's lock is released and reports host keys later through the
//! serial console; Proxmox runs guest work inside its own tasks, whose logs
//! print the host keys, so its backend is awaited (create, start, stop,
//! destroy) and returns them. What is the same — booting a machine — is
//! `nspawn_machines` (`machine::lay_down`, `machine::bring_up`), used by both
//! backends and by the local provider.

pub mod proxmox;
pub mod yandex;
