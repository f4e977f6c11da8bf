//! Builds (or finds) the local machine image and checks it is a template fit for
//! many machines. Needs root, mmdebstrap and the Debian mirror; the first run
//! takes about a minute, later runs find it cached.

mod common;

use rigger_events::Events;
use nspawn_machines::image::ensure_image;

#[tokio::test]
async fn debian_12_image_is_built_once_and_prepared_for_machines() {
    if !common::machines() {
        return;
    }
    let started = std::time::Instant::now();
    let rootfs = ensure_image("debian-12", &Events::silent()).await.expect("image builds");
    eprintln!("ensure_image took {:?}", started.elapsed());

    assert!(rootfs.join("usr/lib/systemd/systemd").exists());
    assert!(rootfs.join("usr/sbin/sshd").exists());
    assert!(rootfs.join("usr/bin/patroni").exists());
    assert!(rootfs.join("usr/lib/postgresql/15/bin/postgres").exists());
    assert!(rootfs.join("usr/bin/etcd").exists());
    // No identity of its own: each machine gets fresh host keys and machine-id.
    let host_keys: Vec<_> = std::fs::read_dir(rootfs.join("etc/ssh")).expect("etc/ssh")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("ssh_host_"))
        .collect();
    assert!(host_keys.is_empty(), "image must not carry SSH host keys");
    assert_eq!(std::fs::read_to_string(rootfs.join("etc/machine-id")).expect("machine-id"), "");
    // sshd on, role services off (disabled, not masked).
    // Unit links are absolute paths inside the image: look at the links, not their targets.
    let is_link = |p: std::path::PathBuf| std::fs::symlink_metadata(p).is_ok();
    assert!(is_link(rootfs.join("etc/systemd/system/multi-user.target.wants/ssh.service")));
    for unit in ["etcd", "patroni", "postgresql", "haproxy", "keepalived", "redis-server", "nginx"] {
        let wants = rootfs.join(format!("etc/systemd/system/multi-user.target.wants/{unit}.service"));
        assert!(!is_link(wants), "{unit} must be disabled");
        let masked = rootfs.join(format!("etc/systemd/system/{unit}.service"));
        assert!(std::fs::read_link(&masked).map(|t| t != std::path::Path::new("/dev/null")).unwrap_or(true), "{unit} must not be masked");
    }
    // Patroni owns every cluster: the distro made none (no config, no data directory).
    let none_in = |dir: &str| std::fs::read_dir(rootfs.join(dir)).map(|d| d.count()).unwrap_or(0) == 0;
    assert!(none_in("etc/postgresql") && none_in("var/lib/postgresql"), "the image must not carry a PostgreSQL cluster");
    // The build's speed-ups stay out of the image: dpkg syncs as usual in a machine.
    assert!(!rootfs.join("usr/bin/eatmydata").exists(), "eatmydata must not be left in the image");
    assert!(rootfs.join("usr/bin/dpkg").exists() && !rootfs.join("usr/bin/dpkg.distrib").exists(), "dpkg must not be diverted");

    // A second call finds it ready.
    let again = ensure_image("debian-12", &Events::silent()).await.expect("cached image");
    assert_eq!(again, rootfs);
}
