pub mod proxmox;
