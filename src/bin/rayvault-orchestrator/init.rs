//! `init`: first-time setup of the controller. It makes the cluster secret
//! (or keeps the one already set), creates an empty `nodes.json`, and prints
//! what to run on the worker machine and what to do next.
//!
//! The secret is printed once on stdout and written nowhere else: not into
//! a file, not into the log, not into a command line. Setting it on each
//! machine is the user's step, with the lines `init` prints (each reads it
//! from a prompt, so it does not land in the shell history either).

use anyhow::Context as _;
use clap::Args;
use rayvault::config::Settings;
use rayvault::nodes::{self, edit};
use std::io::IsTerminal;
use std::sync::Arc;

/// `rayvault-orchestrator init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// Make a new secret even though RAYVAULT_CLUSTER_SECRET is set (then set
    /// the new one on every machine).
    #[arg(long)]
    pub new_secret: bool,
    /// The worker's address (its `tailscale ip -4`), to fill in the commands printed.
    #[arg(long, value_name = "HOST")]
    pub worker_host: Option<String>,
    /// The worker's id (its RAYVAULT_WORKER_ID), to fill in the commands printed.
    #[arg(long, value_name = "ID")]
    pub worker_id: Option<String>,
    /// The worker's port.
    #[arg(long, value_name = "PORT", default_value_t = 8787)]
    pub worker_port: u16,
}

/// Runs `init`; exit code 0, or an error (exit 2) for a bad flag or an
/// unusable state folder.
pub fn run(settings: Arc<Settings>, args: InitArgs) -> anyhow::Result<u8> {
    let worker_id = args.worker_id.clone().unwrap_or_else(|| "windows-worker-1".to_string());
    edit::check_node_id(&worker_id).map_err(anyhow::Error::msg)?;
    let worker_host = match &args.worker_host {
        Some(h) => {
            let (host, _) = edit::parse_host_port(h, args.worker_port).map_err(anyhow::Error::msg)?;
            if let Some(w) = edit::host_warning(&host) {
                eprintln!("rayvault-orchestrator: warning: {w}");
            }
            host
        }
        None => "100.x.y.z".to_string(),
    };
    let port = args.worker_port;
    if port == 0 {
        anyhow::bail!("--worker-port must be from 1 to 65535");
    }

    println!("RayVault cluster setup\n");
    println!("1. The cluster secret (the same on the controller and every worker)\n");
    secret_step(args.new_secret)?;

    let path = nodes::nodes_path(&settings.cluster_dir());
    let path = std::path::absolute(&path).unwrap_or(path);
    println!("2. The worker list\n");
    if path.exists() {
        let list = nodes::load(&path).map_err(anyhow::Error::msg)?.unwrap_or_default();
        println!("   {} already exists ({} node(s)); left as it is.\n", path.display(), list.len());
    } else {
        edit::write(&path, &edit::NodesFile::empty().to_text()).with_context(|| format!("cannot create {}", path.display()))?;
        println!("   Created {} with an empty node list.\n", path.display());
    }

    let addr = if worker_host.contains(':') { format!("[{worker_host}]:{port}") } else { format!("{worker_host}:{port}") };
    println!("3. On the worker machine (Windows PowerShell, in the repository folder)\n");
    println!("   [Environment]::SetEnvironmentVariable('RAYVAULT_WORKER_ID', '{worker_id}', 'User')   # new windows");
    println!("   $env:RAYVAULT_WORKER_ID = '{worker_id}'                                          # this window");
    println!("   # then either run it in this window:");
    println!("   ./scripts/start_worker.ps1 -Host {worker_host} -Port {port}");
    println!("   # or install it as a task that starts at your logon (it keeps the variables of this window):");
    println!("   rayvault-worker service install --host {worker_host} --port {port}\n");
    if args.worker_host.is_none() {
        println!("   (100.x.y.z is the worker's Tailscale address: run `tailscale ip -4` there, or pass --worker-host.)\n");
    }
    println!("4. Next, on this machine\n");
    println!("   rayvault-orchestrator nodes add {worker_id} {addr}");
    println!("   rayvault-orchestrator health");
    Ok(0)
}

/// Prints the secret step: a new secret and how to set it, or a note that
/// one is already set.
fn secret_step(new_secret: bool) -> anyhow::Result<()> {
    let set = rayvault::auth::Keyring::from_env().ok();
    if let (Some(keyring), false) = (&set, new_secret) {
        println!(
            "   A secret is already set in this environment (key id {}); keeping it.\n   \
             Make sure the worker has the same one (its log shows the same key id at start).\n   \
             Pass --new-secret to make a new one instead.\n",
            keyring.current.kid()
        );
        how_to_set("the same secret");
        return Ok(());
    }
    let mut bytes = [0u8; 32];
    getrandom::getrandom(&mut bytes).map_err(|e| anyhow::anyhow!("the operating system gave no random bytes: {e}"))?;
    let secret = hex::encode(bytes);
    if !std::io::stdout().is_terminal() {
        eprintln!("rayvault-orchestrator: warning: stdout is not a terminal, so the new secret goes wherever it is redirected; delete that copy once the secret is set");
    }
    println!("   A new secret (32 random bytes, hex). It is shown here once and written nowhere else:\n   copy it now.\n");
    println!("   {secret}\n");
    how_to_set("the secret");
    Ok(())
}

/// The lines that set the secret on each machine; each reads it from a
/// prompt, so that it does not end up in a shell history. `service install`
/// takes it from the environment it is run in.
fn how_to_set(what: &str) {
    println!("   On this machine (macOS/Linux shell), paste {what} at the prompt (nothing is echoed):");
    println!("     read -rs RAYVAULT_CLUSTER_SECRET && export RAYVAULT_CLUSTER_SECRET");
    println!("   `rayvault-orchestrator service install`, run from that shell, hands it to the daemon's service");
    println!("   (docs/operations.md, \"Where the secret goes\").");
    println!("   On the worker (Windows PowerShell 7), paste it at the prompt, for this window:");
    println!("     $env:RAYVAULT_CLUSTER_SECRET = Read-Host -AsSecureString 'secret' | ConvertFrom-SecureString -AsPlainText");
    println!("   or once for your user (every new window, and scripts/start_worker.ps1, see it):");
    println!("     [Environment]::SetEnvironmentVariable('RAYVAULT_CLUSTER_SECRET', (Read-Host -AsSecureString 'secret' | ConvertFrom-SecureString -AsPlainText), 'User')\n");
}
