//! API simulators (`rigger sim ...`).

pub mod yandex;
