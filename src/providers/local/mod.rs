//! The local provider: systemd-nspawn machines on bridges (being written).
