//! The command line. Names here are a contract (DESIGN.md): scripts rely on them.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "rigger", version, about = "One plan file to a healthy HA stack: network, machines, configs, services.")]
pub struct Cli {
    /// State file (default: .rigger/<project>.state.json beside the plan)
    #[arg(long, global = true)]
    pub state: Option<PathBuf>,
    /// Show every step's details
    #[arg(short, long, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Parse and check a plan file (no network)
    Validate(PlanArg),
    /// Show what apply would change
    Plan(PlanCmd),
    /// Build or change the stack to match the plan (or a saved plan)
    Apply(ApplyCmd),
    /// Delete everything the state holds for this plan's project
    Destroy(DestroyCmd),
    /// Draw the resource and role graph
    Graph(GraphCmd),
    /// Read the state
    #[command(subcommand)]
    State(StateCmd),
    /// Hand the hosts to Ansible, ssh and scripts
    Inventory(InventoryCmd),
    /// Endpoints and connection facts of the built stack
    Output(OutputCmd),
    /// Live health of the stack's services (exit 1 when unhealthy)
    Status(StatusCmd),
    /// Failover drill: kill the Patroni leader's machine, measure the RTO, check no write was lost
    /// (`drill restore`: a point-in-time restore drill)
    Drill(DrillCmd),
    /// Take one pgBackRest backup now (the backup role's repository)
    Backup(BackupCmd),
    /// The repository's backups: times, sizes, WAL range
    Backups(BackupsCmd),
    /// Restore the whole cluster from the repository to a time, the latest state, or a backup
    Restore(RestoreCmd),
    /// Run a cloud API simulator to point plans at
    #[command(subcommand)]
    Sim(SimCmd),
    /// Planned Patroni leader change (Patroni's API), gated on the stack healthy again
    Switchover(SwitchoverCmd),
}

#[derive(Args, Debug)]
pub struct SwitchoverCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// The replica to hand the leadership to (default: the first streaming replica)
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DrillCmd {
    /// Another kind of drill
    #[command(subcommand)]
    pub kind: Option<DrillKind>,
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// An orderly shutdown instead of pulling the plug
    #[arg(long)]
    pub shutdown: bool,
    /// Crash rounds (median and worst RTO), then a planned switchover's write gap
    /// (0: the switchover only)
    #[arg(long)]
    pub rounds: Option<u32>,
}

#[derive(Subcommand, Debug)]
pub enum DrillKind {
    /// Point-in-time restore drill: rows, a time T, more rows and a dropped
    /// table, a restore to T; checks exactly the rows before T are back
    Restore(PlanArg),
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }
}

#[derive(Args, Debug)]
pub struct BackupCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// full, diff (changes since the last full) or incr (since the last backup)
    #[arg(long = "type", value_enum, default_value = "full")]
    pub kind: BackupType,
}

#[derive(Args, Debug)]
pub struct BackupsCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["to", "latest", "backup"])))]
pub struct RestoreCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// Point in time, e.g. "2026-11-28 20:15:00+00" or 2026-11-28T20:15:00Z (no zone: UTC)
    #[arg(long, value_name = "TIME")]
    pub to: Option<String>,
    /// Everything the archive holds
    #[arg(long)]
    pub latest: bool,
    /// The consistent state at the end of this backup (a label from `rigger backups`)
    #[arg(long, value_name = "LABEL")]
    pub backup: Option<String>,
    /// Do not ask for confirmation
    #[arg(long)]
    pub auto_approve: bool,
}

#[derive(Args, Debug)]
pub struct StatusCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum SimCmd {
    /// Yandex Cloud (IAM tokens, VPC, Compute, Operations) on one base URL
    Yandex(SimYandexCmd),
    /// A Proxmox VE node: api2/json over HTTPS, tasks, locks, faults
    Proxmox(ProxmoxSimArgs),
}

/// What stands behind a simulated machine.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimMachines {
    /// A real local systemd-nspawn machine at the instance's address (needs root)
    Local,
}

/// Flags every simulator takes.
#[derive(Args, Debug)]
pub struct SimCommon {
    /// Address to listen on, e.g. 127.0.0.1:8930 (port 0: any free port, printed at start)
    #[arg(long)]
    pub listen: std::net::SocketAddr,
    /// Boot a real machine for every running instance
    #[arg(long, value_enum)]
    pub machines: Option<SimMachines>,
    /// Added to every answer, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency: u64,
    /// How long every operation runs before it is done, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub op_time: u64,
    /// Share of requests that fail (0..1): refused, or done with the answer lost
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub faults: f64,
    /// Seed for ids and faults (same seed, same run)
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

#[derive(Args, Debug)]
pub struct SimYandexCmd {
    #[command(flatten)]
    pub common: SimCommon,
    /// Trust this service-account authorized key file (as written by `yc iam key create`)
    #[arg(long, value_name = "FILE")]
    pub sa_key: Option<PathBuf>,
    /// Without --sa-key: write a new authorized key file here and trust it
    #[arg(long, value_name = "FILE", default_value = "sim-sa-key.json")]
    pub key_out: PathBuf,
    /// Raise or lower a quota, e.g. compute.instances.count=300 (repeatable; the cloud's defaults otherwise)
    #[arg(long = "quota", value_name = "NAME=N")]
    pub quotas: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ProxmoxSimArgs {
    /// Address to listen on (`127.0.0.1:0` picks a free port and prints it)
    #[arg(long, value_name = "ADDR")]
    pub listen: std::net::SocketAddr,
    /// Boot a real local machine for every started guest
    #[arg(long, value_enum)]
    pub machines: Option<SimMachines>,
    /// Added to every request, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub latency: u64,
    /// How long a task (create, clone, start, …) runs, in milliseconds
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    pub op_time: u64,
    /// Probability per request and task of an injected failure (0..1)
    #[arg(long, value_name = "RATE", default_value_t = 0.0)]
    pub faults: f64,
    /// Seed for faults and generated values (default: random, printed)
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// API token id to accept (default root@pam!rigger)
    #[arg(long, value_name = "ID", requires = "token_secret")]
    pub token_id: Option<String>,
    /// Secret of that token (default: random, printed)
    #[arg(long, value_name = "S", requires = "token_id")]
    pub token_secret: Option<String>,
    /// Plain HTTP instead of HTTPS
    #[arg(long)]
    pub http: bool,
    /// The node's size, e.g. node.memory=65536 (MiB), node.cores=16, guests=20 (repeatable; defaults 32768 MiB, 8 cores, no guest limit)
    #[arg(long = "quota", value_name = "NAME=N")]
    pub quotas: Vec<String>,
    /// Verify every request against this Proxmox VE API schema (pve-docs' apidata.js; default: env RIGGER_PROXMOX_APIDATA, else ../shared/reference/api/proxmox/apidata.js beside the source checkout)
    #[arg(long, value_name = "FILE")]
    pub api_definitions: Option<std::path::PathBuf>,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InventoryFormat {
    Ini,
    Yaml,
    Json,
    SshConfig,
}

#[derive(Args, Debug)]
pub struct InventoryCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// One format (default: all four into inventories/<project>/)
    #[arg(long, value_enum)]
    pub format: Option<InventoryFormat>,
    /// Where to write (default: inventories/<project>/hosts.ini|hosts.yaml|inventory.json|ssh_config)
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Ansible dynamic inventory protocol: print all groups and hostvars as JSON
    #[arg(long, conflicts_with_all = ["host", "format", "output"])]
    pub list: bool,
    /// Ansible dynamic inventory protocol: print one host's variables as JSON
    #[arg(long, value_name = "NAME", conflicts_with_all = ["format", "output"])]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct OutputCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// `ca`: write the project CA certificate for clients and print its path
    pub what: Option<String>,
    #[arg(long)]
    pub json: bool,
    /// Print passwords instead of masking them
    #[arg(long)]
    pub show_secrets: bool,
}

#[derive(Args, Debug)]
pub struct PlanArg {
    /// The plan file
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
}

#[derive(Args, Debug)]
pub struct PlanCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// Print the plan as JSON (stable shape, see README)
    #[arg(long)]
    pub json: bool,
    /// Save the plan for `rigger apply FILE`
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Exit 2 when there are changes, 0 when there are none
    #[arg(long)]
    pub detailed_exitcode: bool,
    /// Read what exists from the provider first (default true)
    #[arg(long, default_value_t = true, num_args = 0..=1, default_missing_value = "true", action = clap::ArgAction::Set)]
    pub refresh: bool,
    /// Plan the cloud layer only (no SSH, no host facts)
    #[arg(long)]
    pub infra_only: bool,
}

#[derive(Args, Debug)]
pub struct ApplyCmd {
    /// A plan file, or a plan saved with `rigger plan --out`
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    /// Do not ask for confirmation
    #[arg(long)]
    pub auto_approve: bool,
    /// How many resources or hosts to work on at once (15: Yandex Cloud's
    /// default limit of active operations per folder)
    #[arg(long, default_value_t = 15)]
    pub parallelism: usize,
    /// Stop once the machines exist and answer SSH
    #[arg(long)]
    pub infra_only: bool,
    /// With --infra-only: return as soon as the API reports the machines running
    #[arg(long, requires = "infra_only")]
    pub no_ssh_wait: bool,
    /// Only this host: the cloud step makes it and what it needs (network,
    /// subnet, groups), the config phase changes it alone; repeatable
    #[arg(long = "target", value_name = "HOST")]
    pub targets: Vec<String>,
}

#[derive(Args, Debug)]
pub struct DestroyCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    #[arg(long)]
    pub auto_approve: bool,
    #[arg(long, default_value_t = 15)]
    pub parallelism: usize,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum GraphFormat {
    Mermaid,
    Dot,
}

#[derive(Args, Debug)]
pub struct GraphCmd {
    #[arg(default_value = "rigger.yaml")]
    pub plan: PathBuf,
    #[arg(long, value_enum, default_value = "mermaid")]
    pub format: GraphFormat,
}

#[derive(Subcommand, Debug)]
pub enum StateCmd {
    /// Every resource in the state
    List(PlanArg),
    /// One resource, e.g. machine.pg-1
    Show {
        address: String,
        #[arg(default_value = "rigger.yaml")]
        plan: PathBuf,
    },
}
