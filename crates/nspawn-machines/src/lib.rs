//! Booting local machines: each one a `systemd-nspawn --boot` container of a
//! shared Debian image (built once with mmdebstrap), with its own overlay and
//! its own network namespace on a host bridge, seeded the way cloud-init seeds
//! a VM. Knows nothing of plans or clouds: the local provider and both
//! simulators' `--machines local` say what to boot, and name it.
//! Needs root, systemd-container, mmdebstrap and dpkg-dev.

pub mod cgroup;
pub mod cmd;
pub mod image;
pub mod machine;
pub mod mounts;
pub mod names;
pub mod net;
pub mod preflight;
